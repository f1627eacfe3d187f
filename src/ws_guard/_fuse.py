"""One function for a run of built-in message rules.

Each rule checked on its own costs a call, a dict lookup for the payload and
a turn of the connection's loop: about 100 ns a rule, 0.3 us for the usual
size + type + content trio, on a message path whose whole budget (5 % of a
20 us echo) is 1 us. A run of enforcing ``MaxMessageSize``, ``MessageTypes``
and ``Content`` rules, in that order, is therefore checked by one closure
that reads the payload once. Any other order, and any rule in shadow mode, is
checked rule by rule; the results are the same either way (the first breach
in rule order wins), which ``tests/test_fuse.py`` checks property-wise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from ._close import Close
from ._message_rules import Content, MaxMessageSize, MessageTypes
from ._rule import Checker, Rule
from ._types import Message

#: What a connection's check list is built from: a rule (asked for its
#: per-connection checker) or a checker shared by every connection.
PlanItem = Rule | Checker

_SIZE, _TYPES, _CONTENT = 0, 1, 2


def _phase(rule: Rule) -> int | None:
    """Where *rule* may stand in a fused run, or None when it cannot join one."""
    if not rule.enforce:
        return None  # a shadow breach must not stop the rules after it
    if type(rule) is MaxMessageSize:
        return _SIZE
    if type(rule) is MessageTypes:
        return _TYPES
    if isinstance(rule, Content):
        return _CONTENT
    return None


def plan_checks(rules: Sequence[Rule]) -> tuple[PlanItem, ...]:
    """The rules with checkers, runs of fusable ones replaced by one checker."""
    plan: list[PlanItem] = []
    run: list[Rule] = []
    last = -1

    def flush() -> None:
        if len(run) == 1:
            plan.append(run[0])
        elif run:
            plan.append(_fused(run))
        run.clear()

    for rule in rules:
        phase = _phase(rule)
        if type(rule) is MessageTypes and rule.check is None:
            continue  # text and binary both allowed: nothing to check
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


def _fused(run: Sequence[Rule]) -> Checker:
    limit = -1
    size_breach: Close | None = None
    allow_text = allow_bytes = True
    types_breach: Close | None = None
    tests: list[tuple[Callable[[Any], bool], Close]] = []
    for rule in run:
        if isinstance(rule, MaxMessageSize):
            limit, size_breach = rule.max_bytes, rule._breach
        elif isinstance(rule, MessageTypes):
            allow_text, allow_bytes, types_breach = rule.text, rule.binary, rule._breach
        elif isinstance(rule, Content):
            tests.append((rule.allowed, rule._breach))
    checks = tuple(tests)
    quarter = limit >> 2 if limit >= 0 else -1
    sequential: tuple[Checker, ...] = tuple(
        # these rules' checkers ignore the connection
        one
        for one in (r.checker(cast(Any, None)) for r in run)
        if one is not None
    )

    def check(message: Message) -> Close | None:
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
            for allowed, breach in checks:
                if not allowed(text):
                    return breach
            return None
        data = message.get("bytes")
        if data is None:  # neither payload: not a valid ASGI message; decide rule by rule
            for one in sequential:
                verdict = one(message)
                if isinstance(verdict, Close):
                    return verdict
            return None
        if limit >= 0 and len(data) > limit:
            return size_breach
        if not allow_bytes:
            return types_breach
        for allowed, breach in checks:
            if not allowed(data):
                return breach
        return None

    return check
