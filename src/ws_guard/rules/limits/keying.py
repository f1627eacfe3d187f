"""Keys of the limit rules: checked at construction, named in storage.

A key names the group a limit applies to; a key function returning
``None`` leaves the connection out of that limit. :func:`redis_key` names a
key's entries in storage so that one key's entries share a Redis Cluster slot.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, cast

from ws_guard._validate import check_sync_callable
from ws_guard.errors import ConfigurationError
from ws_guard.rules.keys import KeyFunc, by_connection, by_ip, by_user

if TYPE_CHECKING:
    from ws_guard.rules.runtime import Runtime


def check_key(key: object, rule: str, *, per_connection: bool = True) -> KeyFunc:
    """A key function that can be called with one connection.

    A callable that cannot take the connection would raise on every
    handshake or message; *per_connection* False refuses ``by_connection``
    for rules where one key per connection never limits anything.
    """
    if not callable(key):
        raise ConfigurationError(
            f"{rule} key must be rules.by_connection, rules.by_ip, rules.by_user or a "
            f"callable of the connection, not {key!r}"
        )
    check_sync_callable(f"{rule} key", key)
    try:
        inspect.signature(key).bind(None)
    except TypeError:
        raise ConfigurationError(
            f"{rule} key must take one argument, the connection; {key!r} cannot"
        ) from None
    except ValueError:  # no signature to read (some builtins): trust the caller
        pass
    if key is by_connection and not per_connection:
        raise ConfigurationError(
            f"{rule} key=rules.by_connection gives every connection its own key, so it "
            "never limits; use rules.by_ip, rules.by_user or a callable of the connection"
        )
    return cast(KeyFunc, key)


def key_label(key: KeyFunc) -> str:
    """A stable name for a key function, used in storage key names."""
    if key is by_connection or key is by_ip or key is by_user:
        return key.__name__
    return getattr(key, "__qualname__", None) or type(key).__name__


def require_subject(runtime: Runtime, key: KeyFunc, rule: object) -> None:
    """``by_user`` is only known when a rule in the guard verifies a subject."""
    if key is by_user and not any(r.provides_subject for r in runtime.rules):
        raise ConfigurationError(
            f"{rule!r} uses key=rules.by_user, which needs a rule that verifies the user "
            "(rules.JWTAuth) in the same Guard"
        )


def bind_once(current: Runtime | None, runtime: Runtime, rule: object) -> Runtime:
    """The guard a stateful rule belongs to; a second guard is refused.

    Where the rule names storage keys (``rule.id``), another rule of the same
    class and id in the guard is refused too: with Redis both would count in
    the same keys, so each event would count twice.
    """
    if current is not None and current is not runtime:
        raise ConfigurationError(f"{rule!r} is already part of another Guard; make one per Guard")
    rule_id = getattr(rule, "id", None)
    if getattr(rule, "key", None) is by_connection:
        return runtime  # counted in the connection's own state, never in storage
    for other in runtime.rules:
        if (
            other is not rule
            and type(other) is type(rule)
            and getattr(other, "id", None) == rule_id
        ):
            raise ConfigurationError(
                f"{rule!r} and {other!r} share the storage id {rule_id!r}, so with Redis "
                "they would count in the same keys; give one a distinct name="
            )
    return runtime


def redis_key(namespace: str, kind: str, rule_id: str, key: str, *suffix: object) -> str:
    """``ws_guard:<namespace>:<kind>:{<rule>|<key>}[:suffix]``; the hash tag keeps one
    key's entries on one Redis Cluster slot, so a script may touch all of them."""
    tail = "".join(f":{part}" for part in suffix)
    return f"ws_guard:{namespace}:{kind}:{{{rule_id}|{key}}}{tail}"
