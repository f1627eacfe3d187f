"""Rules: what a client may do, and the keys that group connections.

``JWTAuth`` and ``JWKS`` load on first use (PEP 562 ``__getattr__``): they
need PyJWT and cryptography, about 100 ms of import that a guard without a
JWT rule should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ws_guard.rules.auth.first_message import from_first_message
from ws_guard.rules.auth.tokens import (
    TokenSource,
    from_cookie,
    from_header,
    from_query,
    from_subprotocol,
)
from ws_guard.rules.base import Rule, Stage
from ws_guard.rules.context import Checker, RuleContext
from ws_guard.rules.keys import by_connection, by_ip, by_user
from ws_guard.rules.kinds import json_type
from ws_guard.rules.lifetime import IdleTimeout, MaxLifetime
from ws_guard.rules.limits.auto_ban import AutoBan
from ws_guard.rules.limits.byte_rate import ByteRate
from ws_guard.rules.limits.connect_rate import ConnectRate
from ws_guard.rules.limits.connection_cap import MaxConnectionsPerKey
from ws_guard.rules.limits.message_rate import MessageRate
from ws_guard.rules.messages import Content, Json, MaxMessageSize, MessageTypes, Pattern
from ws_guard.rules.origin import AllowedOrigins
from ws_guard.rules.runtime import Runtime
from ws_guard.rules.slow_consumer import SlowConsumer

if TYPE_CHECKING:
    from ws_guard.rules.auth.jwks import JWKS
    from ws_guard.rules.auth.jwt import JWTAuth

#: Public name -> module that defines it, imported on first access.
_LAZY = {
    "JWKS": "ws_guard.rules.auth.jwks",
    "JWTAuth": "ws_guard.rules.auth.jwt",
}

__all__ = [
    "JWKS",
    "AllowedOrigins",
    "AutoBan",
    "ByteRate",
    "Checker",
    "ConnectRate",
    "Content",
    "IdleTimeout",
    "JWTAuth",
    "Json",
    "MaxConnectionsPerKey",
    "MaxLifetime",
    "MaxMessageSize",
    "MessageRate",
    "MessageTypes",
    "Pattern",
    "Rule",
    "RuleContext",
    "Runtime",
    "SlowConsumer",
    "Stage",
    "TokenSource",
    "by_connection",
    "by_ip",
    "by_user",
    "from_cookie",
    "from_first_message",
    "from_header",
    "from_query",
    "from_subprotocol",
    "json_type",
]


def __getattr__(name: str) -> object:
    """Import ``JWTAuth``/``JWKS`` (and PyJWT with them) when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
