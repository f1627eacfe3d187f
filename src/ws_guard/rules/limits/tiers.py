"""Per-tier limits: a rate or a cap chosen per connection by a callable of its info.

``MessageRate``, ``ByteRate``, ``ConnectRate`` and ``MaxConnectionsPerKey`` take, in place
of a fixed limit, a callable of :class:`~ws_guard.ConnectionInfo` (the
verified claims included) that returns the limit for that connection: a rate
string such as ``"100/second"`` for the rates, an ``int`` for the cap. It is
called once per connection, at admission. Each distinct value it returns is
a *tier*; a tier's counters are its own (its limit is part of the storage
key), so two tiers never share a window.

What the callable returns is parsed once per distinct value (a handshake
does not reparse ``"100/second"``), and at most :data:`MAX_TIERS` distinct
values are accepted per rule: a callable that returns a new value for every
user is a bug that would grow memory and storage keys without bound.

A callable that raises, or returns something that is not a limit, is a bug
in the application, not the client's fault: the handshake closes with 1011
``internal_error`` under the rule's label (as a raising ``Content`` check
does), the traceback or the bad value is logged at ERROR once per rule, and
nothing raises out of ws_guard.

A rule takes a tier in four steps (``MessageRate`` and ``ByteRate`` inherit
them from :class:`~ws_guard.rules.limits.rate_rule.RateRule`):

1. at construction, ``Tiers(public_name, value, rate_tier)`` when
   :func:`is_tiered` says *value* is a callable (``cap_tier`` for a count),
   and a storage id from :func:`tier_name`;
2. at ``bind``, :func:`require_claims` (no tiers with first-message tokens);
3. at admission, ``tiers.limit_for(conn, rule)``: the parsed limit, or the
   rule's 1011 close to return from ``admit``;
4. counters per distinct limit, with the limit (``join_rates``) in each
   storage key.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ws_guard._core.decisions import Close
from ws_guard._core.info import ConnectionInfo
from ws_guard._validate import MAX_SHOWN, check_count, check_sync_callable, shown
from ws_guard.codes import INTERNAL_ERROR, REASON_INTERNAL_ERROR
from ws_guard.errors import ConfigurationError
from ws_guard.rules.limits.rates import Rate, parse_rates

if TYPE_CHECKING:
    from ws_guard.rules.base import Rule
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

logger = logging.getLogger("ws_guard")

#: Distinct values one rule's callable may return; past it, a new value is refused.
MAX_TIERS = 64

L = TypeVar("L")


class BadTier(Exception):
    """A tier callable raised or returned no limit; the message says which."""


def is_tiered(value: object) -> bool:
    """True for a per-tier limit: a callable that is not a ``limits`` item or a string."""
    return callable(value) and not isinstance(value, (str, bytes))


def check_tier_callable(rule: str, value: object) -> Callable[[ConnectionInfo], Any]:
    """*value*, checked to be callable with one argument (``ConfigurationError`` if not)."""
    if not callable(value):
        raise ConfigurationError(f"{rule} tier must be callable, not {value!r}")
    check_sync_callable(f"{rule} tier callable", value)
    try:
        inspect.signature(value).bind(None)
    except TypeError:
        raise ConfigurationError(
            f"{rule} tier callable must take one argument, the connection's info; {value!r} cannot"
        ) from None
    except ValueError:  # no signature to read (some builtins): trust the caller
        pass
    return value


class Tiers(Generic[L]):
    """A rule's tier callable and the limits it returned, parsed once per value.

    *parse* turns a returned value into the limit (``ConfigurationError``
    when it is none); :meth:`resolve` calls the callable and returns the
    parsed limit, or raises :class:`BadTier`.
    """

    __slots__ = ("_cache", "_logged", "_parse", "func", "rule")

    def __init__(self, rule: str, func: object, parse: Callable[[object], L]) -> None:
        self.rule = rule
        self.func = check_tier_callable(rule, func)
        self._parse = parse
        self._cache: dict[tuple[type, object], L] = {}
        self._logged = False

    def resolve(self, info: ConnectionInfo) -> L:
        """The limit for the connection *info* describes; :class:`BadTier` when there is none."""
        try:
            value = self.func(info)
        except Exception as exc:
            self._log(f"{self.rule} tier callable raised", exc)
            raise BadTier(f"{self.rule} tier callable raised {exc!r}") from exc
        # By type too: True == 1 and hashes alike, but True is no limit.
        cached = (type(value), value)
        try:
            return self._cache[cached]
        except KeyError:
            pass
        except TypeError:  # unhashable: no limit either
            self._log(f"{self.rule} tier callable returned {shown(value)}, not a limit", None)
            raise BadTier(f"{self.rule} tier callable returned {shown(value)}") from None
        if len(self._cache) >= MAX_TIERS:
            self._log(f"{self.rule} tier callable returned more than {MAX_TIERS} values", None)
            raise BadTier(f"{self.rule} tier callable returned more than {MAX_TIERS} values")
        try:
            limit = self._parse(value)
        except ConfigurationError as exc:
            why = f"{self.rule} tier callable returned {shown(value)}, not a limit"
            detail = str(exc)
            if len(repr(value)) > MAX_SHOWN:
                # The parser's message repeats the value, which may be huge: cut it.
                detail = detail[: MAX_SHOWN * 2]
            self._log(f"{why}: {detail}", None)
            raise BadTier(why) from None
        self._cache[cached] = limit
        return limit

    def limit_for(self, conn: RuleContext, rule: Rule) -> L | Close:
        """The limit for *conn*, or *rule*'s 1011 ``internal_error`` close when there is none."""
        try:
            return self.resolve(ConnectionInfo(conn))
        except BadTier:
            return rule.breach(INTERNAL_ERROR, REASON_INTERNAL_ERROR)

    def __len__(self) -> int:
        """Distinct tiers seen so far."""
        return len(self._cache)

    def _log(self, what: str, exc: BaseException | None) -> None:
        # Once per rule: a broken callable fails every handshake, and each
        # close is counted and logged by the guard already.
        if self._logged:
            return
        self._logged = True
        logger.error("ws_guard %s; closing 1011 internal_error", what, exc_info=exc)


def rate_tier(value: object) -> tuple[Rate, ...]:
    """A tier callable's rate: a string in ``limits`` syntax such as ``"100/second"``."""
    if not isinstance(value, str):
        raise ConfigurationError(f"a tier rate must be a string such as '20/second', not {value!r}")
    return parse_rates(value)


def cap_tier(value: object) -> int:
    """A tier callable's connection cap: an ``int`` >= 1."""
    return check_count("a tier's connection limit", value)


def tier_name(func: object) -> str:
    """The callable's name for a storage id: ``tiers:<qualname>``."""
    return f"tiers:{getattr(func, '__qualname__', None) or type(func).__name__}"


def require_claims(runtime: Runtime, rule: object) -> None:
    """Refuse a tiered rule where the claims arrive after admission (first-message tokens).

    Its callable runs once, at admission: with a token read from the first
    message it would see no claims, and every "pro" user would land in the
    tier for anonymous ones, silently.
    """
    for other in runtime.rules:
        if getattr(other, "first_message", None) is not None:
            raise ConfigurationError(
                f"{rule!r} picks its limit at admission, but {other!r} reads the token from "
                "the first message, after admission, so the tier callable would see no "
                "claims; read the token from the query, a header, a cookie or the subprotocol"
            )
