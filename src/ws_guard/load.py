"""Load gauges: shed new connections with 1013 when the server is overloaded."""

from ._gauge import LoadGauge
from ._gauges import ConnectionCount, Gauge
from ._lag import EventLoopLag
from ._shed import ShedOpen

__all__ = ["ConnectionCount", "EventLoopLag", "Gauge", "LoadGauge", "ShedOpen"]
