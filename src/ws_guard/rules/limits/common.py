"""What the rate and connection-cap rules share: rates, keys, expiring state.

Rates come from ``limits``' string syntax. Keys name the group a limit
applies to; a key function returning ``None`` leaves the connection out of
that limit. In-memory state per key lives in :class:`ExpiringStates`, which
drops a key's state once it can no longer affect a decision, so memory
follows the keys seen recently, not every key ever seen.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, cast

from ws_guard.errors import ConfigurationError
from ws_guard.rules.keys import KeyFunc, by_connection, by_ip, by_user

if TYPE_CHECKING:
    from ws_guard._core.guard import Guard


#: ``limits`` granularities from the longest, in seconds; a window is written
#: in the longest one that divides it, so ``str(rate)`` parses back to it.
_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` events per ``window`` seconds."""

    limit: int
    window: float

    def __str__(self) -> str:
        """In ``limits`` syntax, which the rules take back: ``5/second``, ``100/2 minutes``."""
        for unit, seconds in _UNITS:
            count, rest = divmod(self.window, seconds)
            if rest == 0 and count >= 1:
                return (
                    f"{self.limit}/{unit}" if count == 1 else f"{self.limit}/{int(count)} {unit}s"
                )
        return f"{self.limit}/{self.window:g} seconds"  # not from limits: no exact unit

    @property
    def compact(self) -> str:
        """``5/1s``: the form in storage key names, kept as it was so keys stay stable."""
        return f"{self.limit}/{self.window:g}s"


def parse_rates(value: object) -> tuple[Rate, ...]:
    """``"20/second"``, ``"10/second; 100/minute"``, a ``limits`` item, or a list of them."""
    from limits import RateLimitItem, parse_many

    items: list[object] = list(value) if isinstance(value, (list, tuple)) else [value]
    rates: list[Rate] = []
    for item in items:
        if isinstance(item, str):
            try:
                parsed = parse_many(item)
            except ValueError as exc:
                raise ConfigurationError(
                    f"rate {item!r} is not in limits syntax such as '20/second' or "
                    "'10/second; 100/minute'"
                ) from exc
        elif isinstance(item, RateLimitItem):
            parsed = [item]
        else:
            raise ConfigurationError(f"rate must be a string such as '20/second', not {item!r}")
        for limit_item in parsed:
            if limit_item.amount < 1:
                raise ConfigurationError(f"rate {item!r} must allow at least one event")
            rates.append(Rate(int(limit_item.amount), float(limit_item.get_expiry())))
    if not rates:
        raise ConfigurationError(f"rate {value!r} names no limit")
    return tuple(rates)


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


def require_subject(guard: Guard, key: KeyFunc, rule: object) -> None:
    """``by_user`` is only known when a rule in the guard verifies a subject."""
    if key is by_user and not any(r.provides_subject for r in guard.rules):
        raise ConfigurationError(
            f"{rule!r} uses key=rules.by_user, which needs a rule that verifies the user "
            "(rules.JWTAuth) in the same Guard"
        )


def bind_once(current: Guard | None, guard: Guard, rule: object) -> Guard:
    """The guard a stateful rule belongs to; a second guard is refused.

    Where the rule names storage keys (``rule.id``), another rule of the same
    class and id in the guard is refused too: with Redis both would count in
    the same keys, so each event would count twice.
    """
    if current is not None and current is not guard:
        raise ConfigurationError(f"{rule!r} is already part of another Guard; make one per Guard")
    rule_id = getattr(rule, "id", None)
    if getattr(rule, "key", None) is by_connection:
        return guard  # counted in the connection's own state, never in storage
    for other in guard.rules:
        if (
            other is not rule
            and type(other) is type(rule)
            and getattr(other, "id", None) == rule_id
        ):
            raise ConfigurationError(
                f"{rule!r} and {other!r} share the storage id {rule_id!r}, so with Redis "
                "they would count in the same keys; give one a distinct name="
            )
    return guard


class _Expiring(Protocol):
    def alive(self, now: float) -> bool: ...


S = TypeVar("S", bound=_Expiring)


class ExpiringStates(Generic[S]):
    """Per-key state objects that are dropped once dead.

    A state says when it is dead (``alive(now)`` is False: its window ended,
    nothing is in flight). The guard's maintenance task sweeps dead states
    every *interval* seconds (the window length), off the message path, so a
    burst of 100k keys is freed within two windows after it ends. A holder
    of a state must look it up again through :meth:`get` once its window
    ended, since a dead state may have been dropped and replaced.
    """

    __slots__ = ("_factory", "_states", "interval")

    def __init__(self, interval: float, factory: Callable[[str], S]) -> None:
        self.interval = interval
        self._factory = factory
        self._states: dict[str, S] = {}

    def get(self, key: str, now: float) -> S:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = self._factory(key)
        return state

    def peek(self, key: str) -> S | None:
        return self._states.get(key)

    def sweep(self, now: float) -> int:
        """Drop dead states; returns how many were dropped."""
        dead = [key for key, state in self._states.items() if not state.alive(now)]
        for key in dead:
            del self._states[key]
        if len(dead) > len(self._states):
            self._states = dict(self._states)  # a dict never shrinks its table; copy it
        return len(dead)

    def values(self) -> Iterator[S]:
        return iter(list(self._states.values()))

    def clear(self) -> None:
        self._states = {}

    def __len__(self) -> int:
        return len(self._states)


def redis_key(namespace: str, kind: str, rule_id: str, key: str, *suffix: object) -> str:
    """``ws_guard:<namespace>:<kind>:{<rule>|<key>}[:suffix]``; the hash tag keeps one
    key's entries on one Redis Cluster slot, so a script may touch all of them."""
    tail = "".join(f":{part}" for part in suffix)
    return f"ws_guard:{namespace}:{kind}:{{{rule_id}|{key}}}{tail}"


_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def guard_namespace(namespace: object, paths: Sequence[str] | None, rules: Sequence[object]) -> str:
    """The prefix of every storage key a guard writes: *namespace*, or one derived.

    The derived name is a hash of the guard's paths and of each rule's class
    and storage id (key function and rates, or ``name``), so the workers of
    one app, which build the same guard, share counters, while two guards
    with other paths or rules in one app do not. Raises ``ConfigurationError``
    for a name that is not 1-64 letters, digits, ``_``, ``.`` or ``-``
    (braces would break the Redis Cluster hash tag).
    """
    if namespace is not None:
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise ConfigurationError(
                f"namespace must be 1-64 letters, digits, '_', '.' or '-', not {namespace!r}"
            )
        return namespace
    parts = sorted(
        f"{type(rule).__module__}.{type(rule).__qualname__}:{getattr(rule, 'id', '')}"
        for rule in rules
    )
    source = repr((None if paths is None else sorted(paths), parts))
    return "g" + hashlib.sha256(source.encode()).hexdigest()[:12]


def join_rates(rates: Iterable[Rate]) -> str:
    """``5/1s,100/60s``: the rates' part of a rule's storage id."""
    return ",".join(rate.compact for rate in rates)


def describe_rates(rates: Iterable[Rate]) -> str:
    """``5/second; 100/minute``: what a rule's repr shows, and its constructor accepts."""
    return "; ".join(str(rate) for rate in rates)
