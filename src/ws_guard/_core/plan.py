"""The hook plan: which rules each step of a connection calls, worked out once per guard.

A rule overrides only the hooks it needs (see ``rules/base.py``); the plan
lists, per hook, the rules that override it, in admission order, so a
connection never calls a no-op and never asks a rule what it does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ws_guard._core.fast_path import FusedRun, PlanItem, plan_checks
from ws_guard.rules.base import Rule, overrides


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
        "connect_rules",
        "lead_run",
        "open_rules",
    )

    def __init__(
        self, rules: Sequence[Rule], own_checks: Sequence[Rule], clock: Callable[[], float]
    ) -> None:
        ordered = sorted([*own_checks, *rules], key=lambda rule: rule.stage)
        #: ``admit`` in stage order, each with whether it also has ``release``.
        self.admission_rules: tuple[tuple[Rule, bool], ...] = tuple(
            (rule, overrides(rule, "release")) for rule in ordered if overrides(rule, "admit")
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
