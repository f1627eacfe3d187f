"""Rules: what a client may do, and the keys that group connections."""

from ._keys import by_connection, by_ip, by_user
from ._message_rules import Content, Json, MaxMessageSize, MessageTypes, Pattern
from ._rule import Checker, Rule, Stage

__all__ = [
    "Checker",
    "Content",
    "Json",
    "MaxMessageSize",
    "MessageTypes",
    "Pattern",
    "Rule",
    "Stage",
    "by_connection",
    "by_ip",
    "by_user",
]
