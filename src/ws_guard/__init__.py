"""ws_guard: policy for WebSocket endpoints, closed with the right code.

Build a :class:`Guard` from rules and load gauges, add
:class:`WSGuardMiddleware` to any ASGI app, read ``guard.metrics.snapshot()``.
"""

from . import load, rules
from ._close import CONSUME, MAX_REASON_BYTES, Close, truncate_reason
from ._connection import ConnectionInfo
from ._errors import ConfigurationError, WSGuardError
from ._guard import CloseEvent, Guard
from ._metrics import DurationHistogram, GaugeReading, MetricsSnapshot
from ._middleware import WSGuardMiddleware
from ._scope import connection_info

__all__ = [
    "CONSUME",
    "MAX_REASON_BYTES",
    "Close",
    "CloseEvent",
    "ConfigurationError",
    "ConnectionInfo",
    "DurationHistogram",
    "GaugeReading",
    "Guard",
    "MetricsSnapshot",
    "WSGuardError",
    "WSGuardMiddleware",
    "connection_info",
    "load",
    "rules",
    "truncate_reason",
]
