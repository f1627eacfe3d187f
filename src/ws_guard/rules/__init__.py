"""Rules: what a client may do, and the keys that group connections."""

from ws_guard.rules.auth.jwks import JWKS
from ws_guard.rules.auth.jwt import JWTAuth
from ws_guard.rules.auth.tokens import (
    TokenSource,
    from_cookie,
    from_first_message,
    from_header,
    from_query,
    from_subprotocol,
)
from ws_guard.rules.base import Checker, Rule, Stage
from ws_guard.rules.context import RuleContext
from ws_guard.rules.keys import by_connection, by_ip, by_user
from ws_guard.rules.limits.connect_rate import ConnectRate
from ws_guard.rules.limits.connection_cap import MaxConnectionsPerKey
from ws_guard.rules.limits.message_rate import MessageRate
from ws_guard.rules.messages import Content, Json, MaxMessageSize, MessageTypes, Pattern
from ws_guard.rules.origin import AllowedOrigins

__all__ = [
    "JWKS",
    "AllowedOrigins",
    "Checker",
    "ConnectRate",
    "Content",
    "JWTAuth",
    "Json",
    "MaxConnectionsPerKey",
    "MaxMessageSize",
    "MessageRate",
    "MessageTypes",
    "Pattern",
    "Rule",
    "RuleContext",
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
]
