"""Load gauges: shed new connections with 1013 when the server is overloaded."""

from ws_guard.load.base import LoadGauge
from ws_guard.load.gauges import ConnectionCount, Gauge
from ws_guard.load.lag import EventLoopLag
from ws_guard.load.shedding import ShedOpen

__all__ = ["ConnectionCount", "EventLoopLag", "Gauge", "LoadGauge", "ShedOpen"]
