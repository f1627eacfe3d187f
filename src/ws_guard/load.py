"""Load gauges: shed new connections with 1013 when the server is overloaded."""

from ._gauge import LoadGauge
from ._gauges import ConnectionCount

__all__ = ["ConnectionCount", "LoadGauge"]
