"""ws_guard: policy for WebSocket endpoints, closed with the right code.

Build a :class:`Guard` from rules and load gauges, add
:class:`WSGuardMiddleware` to any ASGI app, read ``guard.metrics.snapshot()``
in code, or serve it with :func:`metrics_app` (Prometheus) and
:func:`status_app` (JSON).
"""

from . import load, rules
from ._apps import metrics_app, status_app
from ._close import CONSUME, MAX_REASON_BYTES, Close, truncate_reason
from ._connection import ConnectionInfo
from ._errors import ConfigurationError, WSGuardError
from ._guard import CloseEvent, Guard
from ._metrics import CloseKey, DurationHistogram, GaugeReading, MetricsSnapshot
from ._middleware import WSGuardMiddleware
from ._scope import connection_info
from ._version import __version__

__all__ = [
    "CONSUME",
    "MAX_REASON_BYTES",
    "Close",
    "CloseEvent",
    "CloseKey",
    "ConfigurationError",
    "ConnectionInfo",
    "DurationHistogram",
    "GaugeReading",
    "Guard",
    "MetricsSnapshot",
    "WSGuardError",
    "WSGuardMiddleware",
    "__version__",
    "connection_info",
    "load",
    "metrics_app",
    "rules",
    "status_app",
    "truncate_reason",
]
