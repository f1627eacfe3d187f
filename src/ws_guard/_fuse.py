"""One function for a run of built-in message rules.

Each rule checked on its own costs a Python call and a turn of the
connection's loop, about 1 000 machine instructions, on a message path whose
whole budget (5 % of an echo's ~127 000) is some 6 000. A run of enforcing
built-in rules, in the order

    JWTAuth (its refresh test) -> MaxMessageSize -> MessageTypes -> Content...
    -> MessageRate (per connection, one rate)

(any of them may be missing), is therefore checked by one closure per
connection that reads the payload once. Any other order, and any rule in
shadow mode, is checked rule by rule. The decisions are the same either way:
the first breach in rule order wins, a consumed message goes no further, and
a rate counts only the messages the rules before it let through.
``tests/test_fuse.py`` checks this property-wise against rule-by-rule checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._close import Close
from ._jwt import JWTAuth
from ._keys import by_connection
from ._message_rules import Content, MaxMessageSize, MessageTypes
from ._rate import MessageRate
from ._rule import Checker, Rule, Verdict
from ._types import Message

if TYPE_CHECKING:
    from ._connection import Connection

_AUTH, _SIZE, _TYPES, _CONTENT, _RATE = range(5)


def _phase(rule: Rule) -> int | None:
    """Where *rule* may stand in a fused run, or None when it cannot join one."""
    if not rule.enforce:
        return None  # a shadow breach must not stop the rules after it
    kind = type(rule)
    if kind is JWTAuth:
        return _AUTH
    if kind is MaxMessageSize:
        return _SIZE
    if kind is MessageTypes:
        return _TYPES
    if isinstance(rule, Content):
        return _CONTENT
    if (
        isinstance(rule, MessageRate)
        and kind is MessageRate
        and rule.key is by_connection
        and len(rule.rates) == 1
    ):
        return _RATE
    return None


def plan_checks(rules: Sequence[Rule]) -> tuple[PlanItem, ...]:
    """The rules with checkers, runs of fusable ones replaced by one item."""
    plan: list[PlanItem] = []
    run: list[Rule] = []
    last = -1

    def flush() -> None:
        if len(run) == 1:
            plan.append(run[0])
        elif run:
            plan.append(FusedRun(run))
        run.clear()

    for rule in rules:
        if type(rule) is MessageTypes and rule.check is None:
            continue  # text and binary both allowed: nothing to check
        phase = _phase(rule)
        if phase is None:
            flush()
            last = -1
            plan.append(rule)
            continue
        if phase < last or (phase == last and phase != _CONTENT):
            flush()
        run.append(rule)
        last = phase
    flush()
    return tuple(plan)


class FusedRun:
    """A run of fusable rules; :meth:`checker` builds one closure per connection."""

    __slots__ = ("allow_bytes", "allow_text", "auth", "limit", "payload_rules", "rate",
                 "size_breach", "tests", "types_breach")  # fmt: skip

    def __init__(self, run: Sequence[Rule]) -> None:
        self.auth: JWTAuth | None = None
        self.rate: MessageRate | None = None
        self.limit = -1
        self.size_breach: Close | None = None
        self.allow_text = self.allow_bytes = True
        self.types_breach: Close | None = None
        tests: list[tuple[Callable[[Any], bool], Close]] = []
        self.payload_rules: list[Checker] = []
        for rule in run:
            if isinstance(rule, JWTAuth):
                self.auth = rule
            elif isinstance(rule, MessageRate):
                self.rate = rule
            elif isinstance(rule, MaxMessageSize):
                self.limit, self.size_breach = rule.max_bytes, rule._breach
                self.payload_rules.append(rule.check)
            elif isinstance(rule, MessageTypes) and rule.check is not None:
                self.allow_text, self.allow_bytes = rule.text, rule.binary
                self.types_breach = rule._breach
                self.payload_rules.append(rule.check)
            elif isinstance(rule, Content):
                tests.append((rule.allowed, rule._breach))
                self.payload_rules.append(rule.check)
        self.tests = tuple(tests)

    def checker(self, conn: Connection) -> Checker:
        if self.auth is None and self.rate is None:
            return self.payload_check()  # no per-connection state: the leanest closure
        return self.full_check(conn)

    def payload_check(self) -> Checker:
        """Size, type and content only: every branch here is one the message needs.

        The payload steps are written out again in :meth:`full_check` on
        purpose: a shared helper would be one more Python call per message,
        the very cost this module removes. ``tests/test_fuse.py`` checks both
        closures against rule-by-rule decisions.
        """
        limit = self.limit
        quarter = limit >> 2 if limit >= 0 else -1
        size_breach, types_breach = self.size_breach, self.types_breach
        allow_text, allow_bytes, tests = self.allow_text, self.allow_bytes, self.tests
        sequential = tuple(self.payload_rules)
        # The usual case, one content check, without a loop around it.
        single, single_breach = tests[0] if len(tests) == 1 else (None, None)

        def check(message: Message) -> Verdict:
            text = message.get("text")
            if text is not None:
                if limit >= 0:
                    size = len(text)
                    if size > quarter and (
                        size > limit or len(text.encode("utf-8", "surrogatepass")) > limit
                    ):
                        return size_breach
                if not allow_text:
                    return types_breach
                if single is not None:
                    return None if single(text) else single_breach
                for allowed, breach in tests:
                    if not allowed(text):
                        return breach
                return None
            data = message.get("bytes")
            if data is None:  # neither payload: not valid ASGI; decide rule by rule
                for one in sequential:
                    verdict = one(message)
                    if verdict is not None:
                        return verdict
                return None
            if limit >= 0 and len(data) > limit:
                return size_breach
            if not allow_bytes:
                return types_breach
            for allowed, breach in tests:
                if not allowed(data):
                    return breach
            return None

        return check

    def full_check(self, conn: Connection) -> Checker:
        """With the auth rule's refresh test and/or a per-connection rate."""
        limit = self.limit
        quarter = limit >> 2 if limit >= 0 else -1
        size_breach, types_breach = self.size_breach, self.types_breach
        allow_text, allow_bytes, tests = self.allow_text, self.allow_bytes, self.tests
        sequential = tuple(self.payload_rules)
        single, single_breach = tests[0] if len(tests) == 1 else (None, None)

        needle: str | None = None
        on_needle: Checker | None = None
        first: Checker | None = None  # the auth check every message needs (a first-message token)
        if self.auth is not None:
            prefilter = self.auth.refresh_prefilter(conn)
            if prefilter is not None:
                needle, on_needle = prefilter
            else:
                first = self.auth.checker(conn)

        rate = self.rate
        rate_limit = 0
        window = 0.0
        clock: Callable[[], float] = float
        deny: Callable[[float], Close] = _no_deny
        if rate is not None:
            rate_limit, window = rate.rates[0].limit, rate.rates[0].window
            clock = conn.guard.scheduler.clock
            deny = rate._deny
        end = float("-inf")
        count = 0

        def check(message: Message) -> Verdict:
            nonlocal end, count
            if first is not None:
                verdict = first(message)
                if verdict is not None:
                    return verdict
            text = message.get("text")
            if text is not None:
                if needle is not None and needle in text:
                    verdict = on_needle(message)  # type: ignore[misc]
                    if verdict is not None:
                        return verdict
                if limit >= 0:
                    size = len(text)
                    if size > quarter and (
                        size > limit or len(text.encode("utf-8", "surrogatepass")) > limit
                    ):
                        return size_breach
                if not allow_text:
                    return types_breach
                if single is not None:
                    if not single(text):
                        return single_breach
                else:
                    for allowed, breach in tests:
                        if not allowed(text):
                            return breach
            else:
                data = message.get("bytes")
                if data is None:  # neither payload: not valid ASGI; decide rule by rule
                    for one in sequential:
                        verdict = one(message)
                        if verdict is not None:
                            return verdict
                else:
                    if limit >= 0 and len(data) > limit:
                        return size_breach
                    if not allow_bytes:
                        return types_breach
                    for allowed, breach in tests:
                        if not allowed(data):
                            return breach
            if rate_limit:
                t = clock()
                if t >= end:
                    end = t + window
                    count = 1
                elif count < rate_limit:
                    count += 1
                else:
                    return deny(end - t)
            return None

        return check


#: What a connection's checks are built from: each item's ``checker(conn)``.
PlanItem = Rule | FusedRun


def _no_deny(retry: float) -> Close:  # pragma: no cover - only called with a rate
    raise AssertionError("no rate in this run")
