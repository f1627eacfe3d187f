"""ws_guard: policy for WebSocket endpoints, closed with the right code.

Build a :class:`Guard` from rules and load gauges, add
:class:`WSGuardMiddleware` to any ASGI app, read ``guard.metrics.snapshot()``
in code, or serve it with :func:`metrics_app` (Prometheus) and
:func:`status_app` (JSON).
"""

from ws_guard import load, rules
from ws_guard._core.bans import BanInfo
from ws_guard._core.closes import CloseEvent
from ws_guard._core.decisions import CONSUME, Close
from ws_guard._core.guard import Guard
from ws_guard._core.info import ConnectionInfo, connection_info
from ws_guard._core.listing import ConnectionSnapshot
from ws_guard._core.middleware import WSGuardMiddleware
from ws_guard._version import __version__
from ws_guard.admin import admin_app
from ws_guard.codes import MAX_REASON_BYTES, truncate_reason
from ws_guard.errors import (
    ConfigurationError,
    NotStartedError,
    UnsupportedBackendError,
    WSGuardError,
)
from ws_guard.metrics.apps import metrics_app, status_app
from ws_guard.metrics.snapshot import CloseKey, DurationHistogram, GaugeReading, MetricsSnapshot

__all__ = [
    "CONSUME",
    "MAX_REASON_BYTES",
    "BanInfo",
    "Close",
    "CloseEvent",
    "CloseKey",
    "ConfigurationError",
    "ConnectionInfo",
    "ConnectionSnapshot",
    "DurationHistogram",
    "GaugeReading",
    "Guard",
    "MetricsSnapshot",
    "NotStartedError",
    "UnsupportedBackendError",
    "WSGuardError",
    "WSGuardMiddleware",
    "__version__",
    "admin_app",
    "connection_info",
    "load",
    "metrics_app",
    "rules",
    "status_app",
    "truncate_reason",
]
