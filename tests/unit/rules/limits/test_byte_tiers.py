"""``ByteRate`` with a tier callable, in process, memory storage and an injected clock.

The plan comes from the test-only ``PlanClaims`` rule of test_tiers.py (claims
from headers); a real redis-server in test_tiers_redis.py, real uvicorn with
JWTs in tests/e2e/test_byte_rate.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import Clock
from tests.unit.rules.limits.test_tiers import PlanClaims, by_plan, opened, refused
from ws_guard import ConfigurationError, ConnectionInfo, Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


def guarded(rule: rules.ByteRate, *others: rules.Rule, clock: Clock) -> tuple[Any, Guard]:
    guard = Guard(rules=[PlanClaims(), *others, rule], clock=clock)
    return WSGuardMiddleware(echo, guard=guard), guard


async def echoed(ws: ScriptedWebSocket, *texts: str) -> None:
    for text in texts:
        await ws.send_text(text)
        await ws.expect("websocket.send", text=text)


async def closed_with(ws: ScriptedWebSocket, text: str, code: int, reason: str) -> None:
    await ws.send_text(text)
    await ws.expect("websocket.close", code=code, reason=reason)
    await ws.finished()


def warning(rule: str, retry_after: int) -> str:
    return json.dumps({"type": "rate.warning", "rule": rule, "retry_after": retry_after})


async def echoed_with_warning(ws: ScriptedWebSocket, text: str, notice: str) -> None:
    """*text* is echoed and *notice* sent, in either order (the notice goes out on its own)."""
    await ws.send_text(text)
    got = [(await ws.expect("websocket.send"))["text"] for _ in range(2)]
    assert sorted(got) == sorted([text, notice])


@pytest.mark.parametrize("key", [rules.by_connection, rules.by_user])
@pytest.mark.parametrize("several", [False, True])
async def test_two_tiers_count_their_own_bytes_to_the_byte(key: Any, several: bool) -> None:
    clock = Clock(0.0)
    calls: list[object] = []
    # With a minute rate too, the check is the several-windows one, not the single.
    extra = "; 1000/minute" if several else ""

    def tier(info: ConnectionInfo) -> str:
        calls.append(info.claims)
        return ("10/second" if (info.claims or {}).get("plan") == "pro" else "4/second") + extra

    app, guard = guarded(rules.ByteRate(tier, key=key), clock=clock)
    pro, free = await opened(app, "p", "pro"), await opened(app, "f")
    assert calls == [{"sub": "p", "plan": "pro"}, {"sub": "f"}]  # once each, at admission
    await echoed(free, "abc", "d")  # 4 of 4
    await echoed(pro, "abcde", "fghi", "j")  # 10 of 10: free's 4 are not in pro's window
    await closed_with(free, "e", 1008, "rate_limited; retry-after=1")
    await closed_with(pro, "k", 1008, "rate_limited; retry-after=1")
    assert guard.metrics.snapshot().closes_by_rule == {"rate_limited": 2}
    assert len(calls) == 2


async def test_one_user_on_two_tiers_of_a_shared_key_counts_in_two_windows() -> None:
    clock = Clock(0.0)
    rate = rules.ByteRate(by_plan("6/second", "2/second"), key=rules.by_user)
    app, _ = guarded(rate, clock=clock)
    free, pro = await opened(app, "u"), await opened(app, "u", "pro")
    await echoed(free, "ab")
    await echoed(pro, "abcdef")  # 6 of 6, not 8 of 6
    await closed_with(free, "c", 1008, "rate_limited; retry-after=1")
    await closed_with(pro, "g", 1008, "rate_limited; retry-after=1")
    assert sorted(str(rates[0]) for rates in rate._tier_maps) == ["2/second", "6/second"]


async def test_a_message_larger_than_its_tier_closes_1009_and_fits_the_other_tier() -> None:
    app, guard = guarded(rules.ByteRate(by_plan("8/second", "4/second")), clock=Clock(0.0))
    pro, free = await opened(app, "p", "pro"), await opened(app, "f")
    await echoed(pro, "abcde")
    await closed_with(free, "abcde", 1009, "message_too_big")
    await pro.disconnect()
    await pro.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"message_too_big": 1}


async def test_warn_at_warns_at_each_tiers_own_threshold() -> None:
    clock = Clock(0.0)
    rate = rules.ByteRate(by_plan("10/10 seconds", "4/10 seconds"), warn_at=0.5, name="up")
    app, guard = guarded(rate, clock=clock)
    pro, free = await opened(app, "p", "pro"), await opened(app, "f")
    await echoed(free, "a")  # 1 of 4: below 2
    await echoed_with_warning(free, "b", warning("up", 10))  # 2 of 4: free's threshold
    await echoed(pro, "abcd")  # 4 of 10: below pro's 5
    clock.now = 3.5
    await echoed_with_warning(pro, "e", warning("up", 7))  # 5 of 10, 6.5 s left
    await echoed(pro, "fghij")  # 10 of 10: one warning per window
    await closed_with(free, "cde", 1008, "rate_limited; retry-after=7")
    await closed_with(pro, "k", 1008, "rate_limited; retry-after=7")
    assert guard.metrics.snapshot().closes_by_rule == {"up": 2}


async def test_shadow_tiers_deliver_everything_and_report_once_per_window() -> None:
    clock = Clock(0.0)
    rate = rules.ByteRate(by_plan("6/second", "2/second"), warn_at=0.5, enforce=False)
    app, guard = guarded(rate, clock=clock)
    pro, free = await opened(app, "p", "pro"), await opened(app, "f")
    await echoed(free, "ab", "c", "d")  # two breaches in one window: one report, no warning
    await echoed(pro, "abcdef")  # 6 of 6: pro's window is its own
    await echoed(free, "xyz")  # larger than free's limit: reported, delivered
    for ws in (pro, free):
        await ws.disconnect()
        await ws.finished()
    assert all(m.get("text") != warning("rate_limited", 1) for m in pro.sent + free.sent)
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {
        "rate_limited": 1,
        "message_too_big": 1,
    }


@pytest.mark.parametrize(
    ("tier", "logged"),
    [
        (lambda info: 1 / 0, "ByteRate tier callable raised"),
        (lambda info: "lots", "returned 'lots'"),
        (lambda info: 1024, "returned 1024"),
    ],
)
async def test_a_failing_tier_closes_1011_and_logs_once(
    tier: Any, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, guard = guarded(rules.ByteRate(tier), clock=Clock(0.0))
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        for _ in range(3):
            await refused(app, "u", None, 1011, "internal_error")
    errors = [r for r in caplog.records if "tier callable" in r.getMessage()]
    assert len(errors) == 1
    assert logged in errors[0].getMessage()
    assert guard.metrics.snapshot().closes_by_rule == {"internal_error": 3}


async def test_a_tier_below_max_message_size_is_refused_and_the_others_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fixed-limit mistake refused at construction, found when the tier first appears."""
    rate = rules.ByteRate(by_plan("4096/second", "100/second; 10000/minute"))
    app, guard = guarded(rate, rules.MaxMessageSize(1024), clock=Clock(0.0))
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        for _ in range(2):
            await refused(app, "f", None, 1011, "internal_error")
    pro = await opened(app, "p", "pro")
    await echoed(pro, "x" * 1024)
    await pro.disconnect()
    await pro.finished()
    errors = [r.getMessage() for r in caplog.records if "tier callable" in r.getMessage()]
    assert len(errors) == 1
    assert "admits at most 100 bytes per window" in errors[0]
    assert "messages up to 1024 bytes" in errors[0]
    assert guard.metrics.snapshot().closes_by_rule == {"internal_error": 2}


async def test_a_failing_tier_in_shadow_mode_is_counted_and_the_connection_lives() -> None:
    rate = rules.ByteRate(lambda info: "nonsense", enforce=False, name="tiered")
    app, guard = guarded(rate, clock=Clock(0.0))
    ws = await opened(app)
    await echoed(ws, "x" * 100)  # no limit from this rule
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"tiered": 1}


def test_construction_checks_the_callable_and_first_message_tokens() -> None:
    with pytest.raises(ConfigurationError, match="must take one argument"):
        rules.ByteRate(lambda: "5/second")
    auth = rules.JWTAuth("s" * 32, algorithms=["HS256"], token=rules.from_first_message(5.0))
    with pytest.raises(ConfigurationError, match="first message"):
        Guard(rules=[auth, rules.ByteRate(by_plan("5/second", "1/second"))])
    # With a callable the limits are known per tier only: MaxMessageSize is checked then.
    Guard(rules=[rules.MaxMessageSize(1 << 20), rules.ByteRate(by_plan("5/second", "1/second"))])


def test_repr_and_storage_id_name_the_callable() -> None:
    def plan_bytes(info: ConnectionInfo) -> str:
        return "1024/second"

    rate = rules.ByteRate(plan_bytes, key=rules.by_user)
    assert repr(rate).startswith("ByteRate(<function ")
    assert "plan_bytes" in repr(rate)
    assert rate.id == f"by_user:tiers:{plan_bytes.__qualname__}"
