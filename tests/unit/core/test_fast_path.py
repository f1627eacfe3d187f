"""The fast path (fused runs of rules) decides exactly as the rules checked one by one."""

from __future__ import annotations

import functools
import re
import sys
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.apps import echo
from tests.support.backends import BACKENDS
from ws_guard import CONSUME, Close, Guard, WSGuardMiddleware, rules
from ws_guard._core.fast_path import (
    FusedRun,
    RunState,
    TextRateState,
    TextState,
)
from ws_guard._core.plan import plan_checks
from ws_guard.rules.base import Checker, Rule
from ws_guard.testing import ManualClock, ScriptedWebSocket


def checks_of(items: Any, conn: Any) -> list[Checker]:
    return [c for c in (item.checker(conn) for item in items) if c is not None]


def decide(checks: list[Checker], message: dict[str, Any]) -> Any:
    """What the connection does with a message: first enforced breach, or consumed, or passed."""
    for check in checks:
        verdict = check(message)
        if verdict is None:
            continue
        if verdict is CONSUME:
            return CONSUME
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
    if kind == "rate":
        return rules.MessageRate(f"{n % 4 + 1}/second", enforce=enforce)
    return rules.Json(name=f"j{n}", enforce=enforce)


rule_spec = st.tuples(
    st.sampled_from(["size", "text", "binary", "both", "content", "pattern", "json", "rate"]),
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


@given(
    st.lists(rule_spec, max_size=7),
    st.lists(st.tuples(message, st.sampled_from([0.0, 0.0, 0.3, 1.0])), min_size=1, max_size=12),
)
def test_fused_plan_decides_like_rule_by_rule(
    specs: list[tuple[str, int, bool]], script: list[tuple[dict[str, Any], float]]
) -> None:
    rule_list = [make_rule(kind, n + 1, enforce) for kind, n, enforce in specs]
    clock = ManualClock(10.0)
    guard = Guard(rules=rule_list, clock=clock)
    conn = SimpleNamespace(guard=guard, auth=None)
    one_by_one = checks_of(guard.plan.checker_rules, conn)
    fused = checks_of(plan_checks(guard.plan.checker_rules, guard.scheduler.clock), conn)
    for m, step in script:
        clock.now += step
        assert decide(fused, m) == decide(one_by_one, m)


class _SteppedWebSocket(ScriptedWebSocket):
    """Moves the clock by a message's ``_step`` as the guard takes the message."""

    def __init__(self, app: Any, clock: ManualClock) -> None:
        super().__init__(app)
        self.clock = clock

    async def _receive(self) -> dict[str, Any]:
        message = await super()._receive()
        self.clock.now += message.pop("_step", 0.0)
        return message


async def _serve(
    specs: list[tuple[str, int, bool]],
    script: list[tuple[dict[str, Any], float]],
    *,
    fused: bool,
) -> tuple[list[dict[str, Any]], Any]:
    clock = ManualClock(10.0)
    guard = Guard(rules=[make_rule(kind, n + 1, on) for kind, n, on in specs], clock=clock)
    if not fused:
        guard.plan.checks = tuple(guard.plan.checker_rules)  # rule by rule
        guard.plan.lead_run = None
    ws = _SteppedWebSocket(WSGuardMiddleware(echo, guard=guard), clock)
    await ws.connect()
    for m, step in script:
        await ws._incoming.put(dict(m, _step=step))
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    return ws.sent, (snap.closes_by_rule, snap.closes_by_code, snap.dropped_sends)


#: Rules mostly in the fused order, mostly enforcing, mostly with a rate:
#: most plans then lead with a fused run (a Json rule, last, is a check after it).
_ORDER = {"size": 0, "text": 1, "binary": 1, "both": 1, "content": 2, "pattern": 2, "rate": 3}
_some_enforce = st.sampled_from([True, True, True, False])
_rate_spec = st.tuples(st.just("rate"), st.integers(0, 12), _some_enforce)
fusing_specs = st.builds(
    lambda head, rate: sorted([*head, *rate], key=lambda spec: _ORDER.get(spec[0], 9)),
    st.lists(
        st.tuples(st.sampled_from([*_ORDER, "json"]), st.integers(0, 12), _some_enforce),
        max_size=4,
    ),
    st.one_of(
        st.just([]), _rate_spec.map(lambda spec: [spec]), _rate_spec.map(lambda spec: [spec])
    ),
)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=200, deadline=None)
@given(
    fusing_specs,
    st.lists(st.tuples(message, st.sampled_from([0.0, 0.0, 0.3, 1.0])), min_size=1, max_size=16),
)
def test_fast_path_serves_like_rule_by_rule(
    backend: str, specs: list[tuple[str, int, bool]], script: list[tuple[dict[str, Any], float]]
) -> None:
    """The fused run on the message path: same echoes, same close, same counts."""
    fused = anyio.run(functools.partial(_serve, specs, script, fused=True), backend=backend)
    reference = anyio.run(functools.partial(_serve, specs, script, fused=False), backend=backend)
    assert fused == reference


def test_a_run_holds_only_the_data_its_rules_give() -> None:
    guard = Guard(rules=[rules.MaxMessageSize(64), rules.MessageRate("20/second")])
    run = guard.plan.checks[0]
    assert isinstance(run, FusedRun)
    assert (run.max_bytes, run.quarter) == (64, 16)
    assert (run.limit, run.window) == (20, 1.0)
    assert run.contents == ()
    assert run.needle == ""
    assert guard.plan.lead_run is run  # the plan's first item


def _raises_on_q(payload: str | bytes | None) -> bool:
    if isinstance(payload, str) and "q" in payload:
        raise ValueError("a broken content check")
    return _no_z(payload)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 40),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.lists(st.tuples(message, st.sampled_from([0.0, 0.0, 0.3, 1.0])), min_size=1, max_size=12),
)
def test_text_states_decide_like_rule_by_rule(
    size: int,
    text_only: bool,
    rate: bool,
    after: bool,
    script: list[tuple[dict[str, Any], float]],
) -> None:
    """The written-out common runs: long text, binary and neither-payload go the general
    way; a breach, a raising content check, the rate and a check after the run as rules do."""
    rule_list: list[Rule] = [rules.MaxMessageSize(size)]
    if text_only:
        rule_list.append(rules.MessageTypes(binary=False))
    rule_list.append(rules.Content(_raises_on_q, name="noz"))
    if rate:
        rule_list.append(rules.MessageRate("3/second"))
    if after:  # out of the run's order: a check of its own after it
        rule_list.append(rules.MaxMessageSize(max(1, size - 6)))
    clock = ManualClock(10.0)
    guard = Guard(rules=rule_list, clock=clock)
    conn = SimpleNamespace(guard=guard, auth=None)
    run = guard.plan.checks[0]
    assert isinstance(run, FusedRun)
    state = run.bind(conn)
    assert type(state) is (TextRateState if rate else TextState)
    rest = checks_of(guard.plan.checks[1:], conn)
    assert len(rest) == int(after)
    state.rest = rest[0] if rest else None  # as a connection's leading run
    one_by_one = checks_of(guard.plan.checker_rules, conn)
    for m, step in script:
        clock.now += step
        assert decide([state.check], m) == decide(one_by_one, m)


def test_only_runs_that_fit_take_a_text_state() -> None:
    conn = SimpleNamespace(guard=Guard(), auth=None)
    content = rules.Content(_no_z, name="noz")
    for run_rules, kind in [
        ([rules.MaxMessageSize(64), content], TextState),
        ([content, rules.MessageRate("5/second")], TextRateState),
        ([rules.MaxMessageSize(64), rules.MessageTypes(text=False), content], RunState),
        ([rules.MaxMessageSize(64), content, rules.Pattern("q")], RunState),
        ([rules.MaxMessageSize(64), rules.MessageRate("5/second")], RunState),
    ]:
        run = FusedRun(run_rules)
        assert run.text_state is kind, run_rules
        assert type(run.bind(conn)) is kind
    assert FusedRun([content]).quarter == sys.maxsize  # no size limit: any text fits


def test_the_usual_rules_become_one_check() -> None:
    usual = [
        rules.MaxMessageSize(64),
        rules.MessageTypes(binary=False),
        rules.Content(lambda m: "http://" not in m, name="no_links"),
        rules.MessageRate("20/second"),
    ]
    plan = plan_checks(usual)
    assert len(plan) == 1
    assert isinstance(plan[0], FusedRun)


def test_other_orders_shared_keys_and_shadow_rules_stay_separate() -> None:
    size, types = rules.MaxMessageSize(64), rules.MessageTypes(binary=False)
    # Out of order: two runs. A lone rule at the head is a run of its own;
    # further on it checks itself.
    head, tail = plan_checks([types, size])
    assert isinstance(head, FusedRun)
    assert tail is size
    shadow = rules.MaxMessageSize(64, enforce=False)
    assert plan_checks([shadow, types]) == (shadow, types)
    both = rules.MessageTypes()
    assert plan_checks([both]) == ()
    pattern = rules.Pattern(re.compile("x"), name="x")
    assert len(plan_checks([size, pattern, pattern])) == 1
    rate = rules.MessageRate("5/second")
    head, tail = plan_checks([rate, size])
    assert isinstance(head, FusedRun)
    assert head.rate is rate
    assert tail is size
    by_ip = rules.MessageRate("5/second", key=rules.by_ip)
    assert plan_checks([size, by_ip])[1] is by_ip
    two_rates = rules.MessageRate("5/second; 100/minute")
    assert plan_checks([size, two_rates])[1] is two_rates
    # One rate window per connection: a second per-connection rate checks itself.
    second = rules.MessageRate("50/minute")
    plan = plan_checks([size, rate, types, second])
    assert isinstance(plan[0], FusedRun)
    assert plan[0].rate is rate
    assert plan[-1] is second


def test_a_lone_rate_at_the_head_is_a_run() -> None:
    rate = rules.MessageRate("5/second")
    (only,) = plan_checks([rate])
    assert isinstance(only, FusedRun)
    assert only.rate is rate


# -- JWT in a fused run, through the real connection path ----------------------------

SECRET = "fused-run-test-secret-0123456789abcdef"


def token(sub: str, exp: float) -> str:
    import jwt

    return jwt.encode({"sub": sub, "exp": int(exp)}, SECRET, algorithm="HS256")


async def test_jwt_refresh_and_message_rules_in_one_fused_check() -> None:
    import json
    import time

    from tests.support.apps import echo
    from ws_guard import WSGuardMiddleware
    from ws_guard.testing import ScriptedWebSocket

    guard = Guard(
        rules=[
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token")),
            rules.MaxMessageSize(200),
            rules.Content(lambda m: "http://" not in m, name="no_links"),
            rules.MessageRate("3/minute"),
        ]
    )
    assert len(guard.plan.checks) == 1
    assert isinstance(guard.plan.checks[0], FusedRun)
    now = time.time()
    ws = ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard),
        query_string=f"token={token('alice', now + 60)}".encode(),
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("one")
    await ws.expect("websocket.send", text="one")
    # A refresh is consumed (never echoed) and counts against the rate as a message.
    refresh = {"type": "auth.refresh", "token": token("alice", now + 120)}
    await ws.send_text(json.dumps(refresh))
    await ws.send_text("two")
    await ws.expect("websocket.send", text="two")
    await ws.send_text("three")  # the fourth message in a minute, the refresh included
    await ws.expect("websocket.close", code=1008, reason="rate_limited; retry-after=60")
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"rate_limited": 1}


async def test_jwt_refresh_for_another_subject_closes_in_a_fused_run() -> None:
    import json
    import time

    from tests.support.apps import echo
    from ws_guard import WSGuardMiddleware
    from ws_guard.testing import ScriptedWebSocket

    guard = Guard(
        rules=[
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token")),
            rules.MaxMessageSize(200),
        ]
    )
    now = time.time()
    ws = ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard),
        query_string=f"token={token('alice', now + 60)}".encode(),
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("x" * 201)
    await ws.expect("websocket.close", code=1009, reason="message_too_big")
    await ws.finished()

    ws = ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard),
        query_string=f"token={token('alice', now + 60)}".encode(),
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(json.dumps({"type": "auth.refresh", "token": token("mallory", now + 90)}))
    await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.finished()


async def test_first_message_token_then_rules_in_a_fused_run() -> None:
    import json
    import time

    from tests.support.apps import echo
    from ws_guard import WSGuardMiddleware
    from ws_guard.testing import ScriptedWebSocket

    guard = Guard(
        rules=[
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_first_message(5)),
            rules.Content(lambda m: "http://" not in m, name="no_links"),
        ]
    )
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(json.dumps({"token": token("bob", time.time() + 60)}))
    await ws.send_text("hello")
    await ws.expect("websocket.send", text="hello")  # the token message was consumed
    await ws.send_text("see http://x")
    await ws.expect("websocket.close", code=1008, reason="content:no_links")
    await ws.finished()


async def test_after_the_app_closes_the_lead_run_still_decides() -> None:
    """Messages read after the app's own close take the slow path with every check."""
    from ws_guard.types import Message, Receive, Scope, Send

    seen: list[Message] = []

    async def closes_then_reads(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        seen.append(await receive())
        await send({"type": "websocket.close", "code": 1000})
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "websocket.disconnect":
                return

    clock = ManualClock(10.0)
    guard = Guard(rules=[rules.MaxMessageSize(10), rules.MessageRate("2/second")], clock=clock)
    assert guard.plan.lead_run is not None
    ws = ScriptedWebSocket(WSGuardMiddleware(closes_then_reads, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    for text in ("a", "x" * 20, "b", "c"):
        await ws.send_text(text)
    await ws.disconnect()
    await ws.finished()
    # "x"*20 is too big and "c" is over the rate ("a" and "b" used it): both
    # dropped without a second close, since the app had closed already.
    assert [m.get("text") for m in seen] == ["a", "b", None]
    assert seen[-1]["type"] == "websocket.disconnect"
    assert [m["type"] for m in ws.sent] == ["websocket.accept", "websocket.close"]
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_initiator) == {"app": 1}


def test_a_content_rule_with_its_own_checker_is_not_fused() -> None:
    """A fused run calls ``allowed`` directly: a subclass that decides in
    ``checker()`` (here: not on /admin) must keep being asked."""

    class NotOnAdmin(rules.Content):
        def checker(self, conn: Any) -> Checker | None:
            return None if conn.path == "/admin" else super().checker(conn)

    own = NotOnAdmin(lambda p: "z" not in p, name="noz")
    assert plan_checks([own]) == (own,)
    assert plan_checks([rules.MaxMessageSize(9), own])[1] is own
    pattern, json_rule = rules.Pattern("q"), rules.Json()
    assert len(plan_checks([rules.MaxMessageSize(9), pattern, json_rule])) == 1


def test_any_rule_whose_own_checker_decides_is_not_fused() -> None:
    """Not only Content: a subclass of any fast-path rule that overrides
    ``checker()`` is asked itself, and so is one that gives no data."""

    class SizeNotOnAdmin(rules.MaxMessageSize):
        def checker(self, conn: Any) -> Checker:
            return (lambda message: None) if conn.path == "/admin" else super().checker(conn)

    class RateWithOwnData(rules.MessageRate):
        pass  # inherits checker and fast_check together: still fused

    own_size = SizeNotOnAdmin(4)
    assert plan_checks([own_size]) == (own_size,)
    admin = SimpleNamespace(path="/admin", guard=Guard(rules=[own_size]))
    (check,) = checks_of(admin.guard.plan.checks, admin)
    assert check({"type": "websocket.receive", "text": "too long"}) is None
    rate = RateWithOwnData("5/second")
    (run,) = plan_checks([rate])
    assert isinstance(run, FusedRun)
    assert run.rate is rate


def test_the_core_imports_no_concrete_rule() -> None:
    """The fast path is built from the rules' data, never from their classes."""
    import ast
    import pathlib

    import ws_guard._core.fast_path as fast_path

    tree = ast.parse(pathlib.Path(fast_path.__file__).read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    }
    rule_modules = {m for m in imported if m.startswith("ws_guard.rules")}
    assert rule_modules == {"ws_guard.rules.base", "ws_guard.rules.fast", "ws_guard.rules.context"}
