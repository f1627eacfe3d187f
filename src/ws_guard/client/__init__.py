"""The client side: reconnect as each close code asks.

:class:`ReconnectPolicy` is a pure decision table (1013 backs off, 1008
stops unless a fresh token fixes it, 1012 comes back after a short random
delay); :func:`connect` drives ``websockets`` with it. Importing this module
does not import ``websockets``; :func:`connect` does (``ws-guard[client]``).
"""

from ._actions import (
    DEFAULT_ACTIONS,
    Action,
    Backoff,
    Decision,
    NoRetry,
    RandomDelay,
    RefreshThenRetry,
    RefreshToken,
    Retry,
    Stop,
)
from ._connect import GaveUp, Reconnecting, TokenProvider, connect
from ._http import close_from_http
from ._policy import ReconnectPolicy, ReconnectSession
from ._reason import reason_slug, retry_after_hint, split_reason

__all__ = [
    "DEFAULT_ACTIONS",
    "Action",
    "Backoff",
    "Decision",
    "GaveUp",
    "NoRetry",
    "RandomDelay",
    "ReconnectPolicy",
    "ReconnectSession",
    "Reconnecting",
    "RefreshThenRetry",
    "RefreshToken",
    "Retry",
    "Stop",
    "TokenProvider",
    "close_from_http",
    "connect",
    "reason_slug",
    "retry_after_hint",
    "split_reason",
]
