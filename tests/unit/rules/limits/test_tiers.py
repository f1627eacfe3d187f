"""Per-tier limits: a callable of the connection's info picks the rate or cap, in process.

The plan comes from a test-only auth rule that takes the claims from a
header; memory storage here, a real redis-server in test_tiers_redis.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import Clock
from ws_guard import ConfigurationError, ConnectionInfo, Guard, WSGuardMiddleware, rules
from ws_guard._core.connection import Connection
from ws_guard._core.decisions import Close
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.connect_rate import TieredConnectRate
from ws_guard.rules.limits.tiers import MAX_TIERS, Tiers, rate_tier
from ws_guard.testing import ScriptedWebSocket

U = user_key(None, "u")


class PlanClaims(rules.Rule):
    """Test-only stand-in for JWT auth: ``sub`` and ``plan`` claims from headers."""

    stage = rules.Stage.AUTH
    provides_subject = True

    async def admit(self, conn: Connection) -> Close | None:
        conn.subject = conn.header("x-user")
        plan = conn.header("x-plan")
        conn.claims = {"sub": conn.subject, **({"plan": plan} if plan else {})}
        return None


def by_plan(pro: object, free: object) -> Any:
    def tier(info: ConnectionInfo) -> object:
        claims = info.claims or {}
        return pro if claims.get("plan") == "pro" else free

    return tier


def headers(user: str, plan: str | None) -> list[tuple[bytes, bytes]]:
    found = [(b"x-user", user.encode())]
    return found + ([(b"x-plan", plan.encode())] if plan else [])


async def opened(app: Any, user: str = "u", plan: str | None = None) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, client=("10.0.0.1", 40000), headers=headers(user, plan))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def refused(app: Any, user: str, plan: str | None, code: int, reason: str) -> None:
    ws = ScriptedWebSocket(app, client=("10.0.0.1", 40000), headers=headers(user, plan))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=code, reason=reason)
    await ws.finished()


async def echoed(ws: ScriptedWebSocket, n: int) -> None:
    for i in range(n):
        await ws.send_text(f"m{i}")
        await ws.expect("websocket.send", text=f"m{i}")


async def closed(ws: ScriptedWebSocket, code: int, reason: str) -> None:
    await ws.send_text("over")
    await ws.expect("websocket.close", code=code, reason=reason)
    await ws.finished()


# -- MessageRate -----------------------------------------------------------------
@pytest.mark.parametrize("key", [rules.by_connection, rules.by_user])
async def test_two_tiers_of_message_rate_have_their_own_limits(key: Any) -> None:
    clock = Clock(0.0)
    calls: list[object] = []

    def tier(info: ConnectionInfo) -> str:
        calls.append(info.claims)
        return "5/second" if (info.claims or {}).get("plan") == "pro" else "2/second"

    guard = Guard(rules=[PlanClaims(), rules.MessageRate(tier, key=key)], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    pro, free = await opened(app, "p", "pro"), await opened(app, "f")
    assert calls == [{"sub": "p", "plan": "pro"}, {"sub": "f"}]  # once each, at admission
    await echoed(pro, 5)
    await echoed(free, 2)
    await closed(free, 1008, "rate_limited; retry-after=1")
    await closed(pro, 1008, "rate_limited; retry-after=1")
    assert guard.metrics.snapshot().closes_by_rule == {"rate_limited": 2}
    assert len(calls) == 2


async def test_tiers_of_a_shared_key_never_share_a_window() -> None:
    """One user on two plans (an upgrade mid-session): each tier counts on its own."""
    clock = Clock(0.0)
    rate = rules.MessageRate(by_plan("3/second", "1/second"), key=rules.by_user)
    guard = Guard(rules=[PlanClaims(), rate], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    free, pro, pro2 = (
        await opened(app, "u"),
        await opened(app, "u", "pro"),
        await opened(app, "u", "pro"),
    )
    await echoed(free, 1)
    await echoed(pro, 2)
    await echoed(pro2, 1)  # the pro tier's third message: pro and pro2 share it
    await closed(pro2, 1008, "rate_limited; retry-after=1")
    await closed(free, 1008, "rate_limited; retry-after=1")  # 1 of 1, not 4 of 3
    assert sorted(len(maps[0]) for maps in rate._tier_maps.values()) == [1, 1]
    assert sorted(str(rates[0]) for rates in rate._tier_maps) == ["1/second", "3/second"]
    await pro.disconnect()
    await pro.finished()


async def test_a_tiered_per_kind_rate() -> None:
    clock = Clock(0.0)
    rate = rules.MessageRate(
        by_plan("3/second", "1/second"), match=rules.json_type("chat"), name="chat"
    )
    guard = Guard(rules=[PlanClaims(), rate], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    pro = await opened(app, "p", "pro")
    for _ in range(3):
        await pro.send_text('{"type": "chat"}')
        await pro.expect("websocket.send", text='{"type": "chat"}')
    await pro.send_text('{"type": "chat"}')
    await pro.expect("websocket.close", code=1008, reason="rate_limited:chat; retry-after=1")
    await pro.finished()


async def test_the_callable_without_auth_sees_no_claims() -> None:
    seen: list[ConnectionInfo] = []

    def tier(info: ConnectionInfo) -> str:
        seen.append(info)
        return "1/second"

    guard = Guard(rules=[rules.MessageRate(tier)], clock=Clock(0.0))
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    assert seen[0].claims is None
    assert seen[0].client_ip == "10.0.0.1"
    await echoed(ws, 1)
    await closed(ws, 1008, "rate_limited; retry-after=1")


# -- ConnectRate -----------------------------------------------------------------
async def test_two_tiers_of_connect_rate_count_apart_after_auth() -> None:
    clock = Clock(0.0)
    rate = rules.ConnectRate(by_plan("3/minute", "1/minute"), key=rules.by_user)
    assert isinstance(rate, TieredConnectRate)
    assert isinstance(rate, rules.ConnectRate)
    assert rate.stage == rules.Stage.TIERED_CONNECT_RATE
    guard = Guard(rules=[rate, PlanClaims()], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    free = [await opened(app, "u")]
    await refused(app, "u", None, 1008, "connect_rate_limited; retry-after=60")
    pro = [await opened(app, "u", "pro") for _ in range(3)]  # the same user, another tier
    await refused(app, "u", "pro", 1008, "connect_rate_limited; retry-after=60")
    assert guard.metrics.snapshot().closes_by_rule == {"connect_rate_limited": 2}
    assert sorted(len(t.counters) for t in rate._tiers.values()) == [1, 1]
    for ws in free + pro:
        await ws.disconnect()
        await ws.finished()


def test_a_fixed_connect_rate_stays_before_auth_and_refuses_by_user() -> None:
    assert type(rules.ConnectRate("5/minute")) is rules.ConnectRate
    assert rules.ConnectRate("5/minute").stage == rules.Stage.CONNECT_RATE
    with pytest.raises(ConfigurationError, match="by_user"):
        rules.ConnectRate("5/minute", key=rules.by_user)


# -- MaxConnectionsPerKey --------------------------------------------------------
async def test_two_tiers_of_connection_caps() -> None:
    cap = rules.MaxConnectionsPerKey(by_plan(3, 1), key=rules.by_user)
    guard = Guard(rules=[PlanClaims(), cap], clock=Clock(0.0))
    app = WSGuardMiddleware(echo, guard=guard)
    free = await opened(app, "u")
    await refused(app, "u", None, 1008, "too_many_connections")
    pro = [await opened(app, "u", "pro") for _ in range(3)]
    await refused(app, "u", "pro", 1008, "too_many_connections")
    assert (cap.count(U, 1), cap.count(U, 3)) == (1, 3)
    for ws in [free, *pro]:
        await ws.disconnect()
        await ws.finished()
    assert (cap.count(U, 1), cap.count(U, 3)) == (0, 0)
    assert guard.metrics.snapshot().closes_by_rule == {"too_many_connections": 2}


# -- a callable that fails -------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "logged"),
    [
        (lambda: rules.MessageRate(lambda info: info.claims["plan"]), "raised"),
        (lambda: rules.MessageRate(lambda info: 5), "returned 5"),
        (lambda: rules.MessageRate(lambda info: "often"), "returned 'often'"),
        (lambda: rules.MessageRate(lambda info: ["5/second"]), "returned ['5/second']"),
        (lambda: rules.MessageRate(lambda info: "1/0 seconds"), "window of zero length"),
        (lambda: rules.ByteRate(lambda info: "1/11 years"), "longer than ten years"),
        (lambda: rules.ConnectRate(lambda info: None), "returned None"),
        (lambda: rules.MaxConnectionsPerKey(lambda info: "3"), "returned '3'"),
        (lambda: rules.MaxConnectionsPerKey(lambda info: True), "returned True"),
        (lambda: rules.MaxConnectionsPerKey(lambda info: 0), "returned 0"),
    ],
)
async def test_a_failing_tier_closes_1011_and_logs_once(
    make: Any, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    rule = make()
    guard = Guard(rules=[rule], clock=Clock(0.0))
    app = WSGuardMiddleware(echo, guard=guard)
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        for _ in range(3):
            await refused(app, "u", None, 1011, "internal_error")
    errors = [r for r in caplog.records if "tier callable" in r.getMessage()]
    assert len(errors) == 1
    assert logged in errors[0].getMessage()
    assert guard.metrics.snapshot().closes_by_rule == {"internal_error": 3}


async def test_a_failing_tier_in_shadow_mode_is_counted_and_the_connection_lives() -> None:
    rate = rules.MessageRate(lambda info: "nonsense", enforce=False, name="tiered")
    guard = Guard(rules=[rate], clock=Clock(0.0))
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    await echoed(ws, 10)  # no limit from this rule
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"tiered": 1}


def test_rates_are_parsed_once_per_distinct_value_and_bounded() -> None:
    parsed: list[object] = []

    def parse(value: object) -> Any:
        parsed.append(value)
        return rate_tier(value)

    values = iter(["5/second", "5/second", "1/second", *[f"{n}/second" for n in range(100, 300)]])
    tiers = Tiers("MessageRate", lambda info: next(values), parse)
    info: Any = None
    assert tiers.resolve(info) is tiers.resolve(info)
    assert str(tiers.resolve(info)[0]) == "1/second"
    assert parsed == ["5/second", "1/second"]
    for _ in range(MAX_TIERS - 2):
        tiers.resolve(info)
    assert len(tiers) == MAX_TIERS
    with pytest.raises(Exception, match=f"more than {MAX_TIERS} values"):
        tiers.resolve(info)


# -- construction ----------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda bad: rules.MessageRate(bad),
        lambda bad: rules.ConnectRate(bad),
        lambda bad: rules.MaxConnectionsPerKey(bad),
    ],
)
@pytest.mark.parametrize("bad", [lambda: "5/second", lambda a, b: "5/second"])
def test_a_callable_that_cannot_take_the_info_is_refused(make: Any, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="must take one argument") as info:
        make(bad)
    assert "lambda" in str(info.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: rules.MessageRate(by_plan("5/second", "1/second")),
        lambda: rules.ConnectRate(by_plan("5/minute", "1/minute")),
        lambda: rules.MaxConnectionsPerKey(by_plan(5, 1)),
    ],
)
def test_a_tier_with_first_message_tokens_is_refused(make: Any) -> None:
    auth = rules.JWTAuth("s" * 32, algorithms=["HS256"], token=rules.from_first_message(5.0))
    with pytest.raises(ConfigurationError, match="first message"):
        Guard(rules=[auth, make()])


def test_repr_shows_the_callable() -> None:
    def plan_rate(info: ConnectionInfo) -> str:
        return "1/second"

    rate = rules.MessageRate(plan_rate)
    assert repr(rate).startswith("MessageRate(<function ")
    assert "plan_rate" in repr(rate)
    assert rate.id == f"by_connection:tiers:{plan_rate.__qualname__}"


async def test_a_failing_tier_is_http_500_in_http_denial_mode() -> None:
    rate = rules.ConnectRate(lambda info: "often")
    guard = Guard(rules=[rate], clock=Clock(0.0), reject="http")
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), client=("10.0.0.1", 40000))
    await ws.connect()
    await ws.expect("websocket.http.response.start", status=500)
    await ws.expect("websocket.http.response.body", body=b"internal_error")
    assert guard.metrics.snapshot().closes_by_rule == {"internal_error": 1}


async def test_a_huge_value_from_a_tier_callable_is_cut_in_the_log_and_the_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 1 MB string made a 2 MB log line (the value, and the parser's message repeating it)."""
    huge = "9" * 1_000_000
    tiers = Tiers("MessageRate", lambda info: huge, rate_tier)
    with (
        caplog.at_level(logging.ERROR, logger="ws_guard"),
        pytest.raises(Exception, match=r"\(1000002 characters\), not a limit$") as info,
    ):
        tiers.resolve(None)  # type: ignore[arg-type]
    assert len(str(info.value)) < 200
    (record,) = caplog.records
    assert len(record.getMessage()) < 400
    assert "(1000002 characters)" in record.getMessage()
