"""Rules: what a client may do, and the keys that group connections."""

from ._caps import MaxConnectionsPerKey
from ._connect_rate import ConnectRate
from ._jwks import JWKS
from ._jwt import JWTAuth
from ._keys import by_connection, by_ip, by_user
from ._message_rules import Content, Json, MaxMessageSize, MessageTypes, Pattern
from ._origin import AllowedOrigins
from ._rate import MessageRate
from ._rule import Checker, Rule, Stage
from ._tokens import (
    TokenSource,
    from_cookie,
    from_first_message,
    from_header,
    from_query,
    from_subprotocol,
)

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
