"""Fused message checks decide exactly as the rules checked one by one."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ws_guard import Close, rules
from ws_guard._fuse import plan_checks
from ws_guard._rule import Rule


def sequential(rule_list: list[Rule], message: dict[str, Any]) -> Close | None:
    """The reference: every checker in rule order, first enforced breach wins."""
    for rule in rule_list:
        check = rule.checker(None)  # type: ignore[arg-type]
        if check is None:
            continue
        verdict = check(message)
        if isinstance(verdict, Close) and not verdict.shadow:
            return verdict
    return None


def planned(rule_list: list[Rule], message: dict[str, Any]) -> Close | None:
    for item in plan_checks(rule_list):
        check = item.checker(None) if isinstance(item, Rule) else item  # type: ignore[arg-type]
        if check is None:
            continue
        verdict = check(message)
        if isinstance(verdict, Close) and not verdict.shadow:
            return verdict
    return None


def _no_z(payload: str | bytes | None) -> bool:
    if payload is None:
        return True
    return (b"z" if isinstance(payload, bytes) else "z") not in payload  # type: ignore[operator]


def make_rule(kind: str, n: int, enforce: bool) -> Rule:
    if kind == "size":
        return rules.MaxMessageSize(n, enforce=enforce)
    if kind == "text":
        return rules.MessageTypes(text=True, binary=False, enforce=enforce)
    if kind == "binary":
        return rules.MessageTypes(text=False, binary=True, enforce=enforce)
    if kind == "both":
        return rules.MessageTypes(enforce=enforce)
    if kind == "content":
        return rules.Content(_no_z, name=f"c{n}", enforce=enforce)
    if kind == "pattern":
        return rules.Pattern(r"q+", name=f"p{n}", enforce=enforce)
    return rules.Json(name=f"j{n}", enforce=enforce)


rule_spec = st.tuples(
    st.sampled_from(["size", "text", "binary", "both", "content", "pattern", "json"]),
    st.integers(0, 12),
    st.booleans(),
)
message = st.one_of(
    st.text(alphabet='abzq{}"1é😀', max_size=16).map(
        lambda t: {"type": "websocket.receive", "text": t}
    ),
    st.binary(max_size=16).map(lambda b: {"type": "websocket.receive", "bytes": b}),
    st.just({"type": "websocket.receive", "bytes": b'{"a": 1}'}),
    st.just({"type": "websocket.receive", "text": None, "bytes": None}),
)


@given(st.lists(rule_spec, max_size=6), st.lists(message, min_size=1, max_size=8))
def test_fused_plan_decides_like_rule_by_rule(
    specs: list[tuple[str, int, bool]], messages: list[dict[str, Any]]
) -> None:
    rule_list = [make_rule(kind, n + 1, enforce) for kind, n, enforce in specs]
    for m in messages:
        assert planned(rule_list, m) == sequential(rule_list, m)


def test_the_usual_trio_becomes_one_check() -> None:
    trio = [
        rules.MaxMessageSize(64),
        rules.MessageTypes(binary=False),
        rules.Content(lambda m: "http://" not in m, name="no_links"),
    ]
    plan = plan_checks(trio)
    assert len(plan) == 1
    assert not isinstance(plan[0], Rule)


def test_other_orders_and_shadow_rules_stay_separate() -> None:
    size, types = rules.MaxMessageSize(64), rules.MessageTypes(binary=False)
    assert plan_checks([types, size]) == (types, size)
    shadow = rules.MaxMessageSize(64, enforce=False)
    assert plan_checks([shadow, types]) == (shadow, types)
    both = rules.MessageTypes()
    assert plan_checks([both]) == ()
    pattern = rules.Pattern(re.compile("x"), name="x")
    assert len(plan_checks([size, pattern, pattern])) == 1
