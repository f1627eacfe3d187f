"""The hook plan: which rules each step of a connection calls, worked out once per guard.

And the message-check plan: the rules with checkers in order, with runs of
fast-path rules (``Rule.fast_check()`` data) joined into one
:class:`~ws_guard._core.fast_path.FusedRun`.

A rule overrides only the hooks it needs (see ``rules/base.py``); the plan
lists, per hook, the rules that override it, in admission order, so a
connection never calls a no-op and never asks a rule what it does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ws_guard._core.fast_path import FusedRun, fast_check_of
from ws_guard.rules.base import Rule, overrides
from ws_guard.rules.fast import AuthCheck, ContentTest, SingleRate, SizeLimit, TypeFilter

_PHASES: dict[type, int] = {
    AuthCheck: 0,
    SizeLimit: 1,
    TypeFilter: 2,
    ContentTest: 3,
    SingleRate: 4,
}
_CONTENT = _PHASES[ContentTest]

#: What a connection's checks are built from: each item's ``checker(conn)``.
PlanItem = Rule | FusedRun


def plan_checks(
    rules: Sequence[Rule], clock: Callable[[], float] = time.monotonic
) -> tuple[PlanItem, ...]:
    """The rules with checkers, runs of fast-path rules replaced by one :class:`FusedRun`.

    *clock* is what a run's rate reads (the guard scheduler's). Only one
    run keeps a rate window; a second per-connection rate checks itself.
    """
    plan: list[PlanItem] = []
    run: list[Rule] = []
    last = -1
    rate_fused = False

    def flush() -> None:
        # A lone rule after the head checks itself: its own check is one call too.
        if len(run) == 1 and plan:
            plan.append(run[0])
        elif run:
            plan.append(FusedRun(run, clock))
        run.clear()

    for rule in rules:
        data = fast_check_of(rule)
        if isinstance(data, TypeFilter) and data.text and data.binary:
            continue  # text and binary both allowed: nothing to check
        if not rule.enforce:
            data = None  # a shadow breach must not stop the rules after it
        if isinstance(data, SingleRate):
            if rate_fused:
                data = None
            rate_fused = True
        if data is None:
            flush()
            last = -1
            plan.append(rule)
            continue
        phase = _PHASES[type(data)]
        if phase < last or (phase == last and phase != _CONTENT):
            flush()
        run.append(rule)
        last = phase
    flush()
    return tuple(plan)


def prepares(rule: Rule) -> bool:
    """Whether admission may take *rule*'s ``prepare`` for its ``admit``.

    Only when ``prepare`` is defined by the class that defines ``admit`` or
    a subclass of it: a user's subclass that overrides ``admit`` alone must
    have its ``admit`` called.
    """
    if not overrides(rule, "prepare"):
        return False
    mro = type(rule).__mro__
    admit_cls = next(c for c in mro if "admit" in vars(c))
    prepare_cls = next(c for c in mro if "prepare" in vars(c))
    return issubclass(prepare_cls, admit_cls)


class HookPlan:
    """The rules each connection hook calls, in order; immutable after construction.

    *rules* are the user's rules; *own_checks* the guard's own (the peer
    check), which come first within their stage. ``sorted`` by stage is
    stable, so the user's order holds within a stage.
    """

    __slots__ = (
        "accept_rules",
        "admission_rules",
        "checker_rules",
        "checks",
        "close_rules",
        "connect_rules",
        "last_prepared",
        "lead_run",
        "open_rules",
        "prepared_rules",
        "send_rules",
    )

    def __init__(
        self, rules: Sequence[Rule], own_checks: Sequence[Rule], clock: Callable[[], float]
    ) -> None:
        ordered = sorted([*own_checks, *rules], key=lambda rule: rule.stage)
        #: ``admit`` in stage order, each with whether it also has ``release``.
        self.admission_rules: tuple[tuple[Rule, bool], ...] = tuple(
            (rule, overrides(rule, "release")) for rule in ordered if overrides(rule, "admit")
        )
        #: Admission rules that can hand their Redis call over (``prepare``),
        #: and the index of the last of them: the rules between two of them
        #: run while the first's call waits; none after the last does.
        self.prepared_rules = frozenset(rule for rule, _ in self.admission_rules if prepares(rule))
        self.last_prepared = max(
            (i for i, (rule, _) in enumerate(self.admission_rules) if rule in self.prepared_rules),
            default=-1,
        )
        self.connect_rules = tuple(r for r in ordered if overrides(r, "on_connect"))
        self.checker_rules = tuple(r for r in ordered if overrides(r, "checker"))
        #: What each connection's message checks are built from (see _core/fast_path.py).
        self.checks: tuple[PlanItem, ...] = plan_checks(self.checker_rules, clock)
        first = self.checks[0] if self.checks else None
        #: The first item when it is a run of fast-path rules (for reading).
        self.lead_run = first if isinstance(first, FusedRun) else None
        self.accept_rules = tuple(r for r in rules if overrides(r, "on_accept"))
        self.open_rules = tuple(r for r in rules if overrides(r, "on_open"))
        #: Rules told of each guard close (``on_close``); usually none.
        self.close_rules = tuple(r for r in rules if overrides(r, "on_close"))
        #: ``(limit seconds, rule)`` for the rules that watch the app's sends,
        #: shortest limit first; empty: the app gets the plain send path.
        self.send_rules: tuple[tuple[float, Rule], ...] = tuple(
            sorted(
                ((r.send_wait_limit(), r) for r in rules if overrides(r, "send_waited")),
                key=lambda pair: pair[0],
            )
        )
