"""In-band refresh limits and principal checks, in process on an injected clock.

The end-to-end attacks are in ``tests/e2e/test_refresh_security.py``; here are the
configuration checks, shadow mode, both check paths (compiled and plain) and
``by_user``'s key format, where an injected clock makes windows exact.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.jwt_keys import SECRET, mint
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard._core.fast_path import FusedRun
from ws_guard.rules.base import Rule, Stage
from ws_guard.rules.keys import MAX_USER_KEY, user_key
from ws_guard.testing import ManualClock as Clock
from ws_guard.testing import ScriptedWebSocket


def refresh(token: str) -> str:
    return json.dumps({"type": "auth.refresh", "token": token})


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


class PassThrough(Rule):
    """A message check that passes everything and joins no compiled run."""

    def checker(self, conn: Any) -> Any:
        return lambda message: None


class Front(PassThrough):
    """Checks before the auth stage, so JWTAuth does not lead a compiled run."""

    stage = Stage.ORIGIN


def build(
    *extra: Rule, fused: bool = True, **options: Any
) -> tuple[Guard, WSGuardMiddleware, Clock, list[int]]:
    """A guard with JWTAuth and *extra*: compiled into one run, or (``fused=False``)
    kept apart by pass-through checks, so each rule checks on its own."""
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_header(), **options)
    decodes: list[int] = []
    decode = rule.decode

    def counted(token: str, key: Any) -> Any:
        decodes.append(1)
        return decode(token, key)

    rule.decode = counted  # type: ignore[method-assign]
    chosen = [rule, *extra] if fused else [Front(), rule, PassThrough(), *extra]
    clock = Clock(1000.0)
    guard = Guard(rules=chosen, clock=clock, app_exit_timeout=None)
    assert any(isinstance(item, FusedRun) for item in guard.plan.checks) is fused
    return guard, WSGuardMiddleware(echo, guard=guard), clock, decodes


async def barrier(ws: ScriptedWebSocket) -> None:
    """Wait until every message sent so far was processed (before moving the clock)."""
    await ws.send_text("sync")
    await ws.expect("websocket.send", text="sync")


async def opened(app: WSGuardMiddleware, token: str) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, headers=bearer(token))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("3/fortnight", "'3/fortnight'"),
        ("0/minute", "'0/minute'"),
        (42, "42"),
        ("", "''"),
    ],
)
def test_a_bad_refresh_rate_names_the_value(value: object, shown: str) -> None:
    with pytest.raises(ConfigurationError, match="JWTAuth refresh_rate") as info:
        rules.JWTAuth(SECRET, algorithms=["HS256"], refresh_rate=value)  # type: ignore[arg-type]
    assert shown in str(info.value)


def test_the_default_refresh_rate_is_three_a_minute() -> None:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"])
    assert [(r.limit, r.window) for r in rule.refresh_rates] == [(3, 60.0)]
    several = rules.JWTAuth(SECRET, algorithms=["HS256"], refresh_rate=["1/second", "5/hour"])
    assert [(r.limit, r.window) for r in several.refresh_rates] == [(1, 1.0), (5, 3600.0)]


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
async def test_the_refresh_limit_comes_before_the_signature_and_its_window_reopens(
    fused: bool,
) -> None:
    guard, app, clock, decodes = build(fused=fused, refresh_rate="2/minute")
    ws = await opened(app, mint(exp_in=600))
    await ws.send_text(refresh(mint(exp_in=700)))
    await barrier(ws)
    clock.now += 59.5
    await ws.send_text(refresh(mint(exp_in=800)))
    await barrier(ws)
    clock.now += 1.0  # a new window: the first refresh opened the last one at 1000.0
    await ws.send_text(refresh(mint(exp_in=900)))
    await ws.send_text(refresh(mint(exp_in=1000)))
    await ws.send_text(refresh(mint(exp_in=1100)))  # the third in this window
    await ws.expect("websocket.close", code=1008, reason="refresh_rate_limited; retry-after=60")
    await ws.finished()
    assert len(decodes) == 1 + 4
    assert guard.metrics.snapshot().closes_by_rule == {"refresh_rate_limited": 1}


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
async def test_a_refresh_counts_in_every_message_rate(fused: bool) -> None:
    guard, app, _, decodes = build(
        rules.MessageRate("3/second", name="fast"),
        rules.MessageRate(["10/second", "4/minute"], name="slow"),
        fused=fused,
        refresh_rate="100/second",
    )
    ws = await opened(app, mint(exp_in=600))
    await ws.send_text("one")
    await ws.expect("websocket.send", text="one")
    await ws.send_text(refresh(mint(exp_in=700)))
    await ws.send_text(refresh(mint(exp_in=800)))
    await ws.send_text(refresh(mint(exp_in=900)))  # the fourth message in the second
    await ws.expect("websocket.close", code=1008, reason="rate_limited; retry-after=1")
    await ws.finished()
    assert len(decodes) == 1 + 2
    assert guard.metrics.snapshot().closes_by_rule == {"fast": 1}


async def test_a_shadow_rate_reports_a_refresh_and_lets_it_through() -> None:
    guard, app, _, decodes = build(
        rules.MessageRate("1/minute", enforce=False), refresh_rate="100/second"
    )
    ws = await opened(app, mint(exp_in=600))
    await ws.send_text(refresh(mint(exp_in=700, gen=2)))
    await ws.send_text(refresh(mint(exp_in=800, gen=3)))  # over the shadow rate: applied
    await ws.send_text("after")
    await ws.expect("websocket.send", text="after")
    assert ws.scope["ws_guard"].claims["gen"] == 3
    assert len(decodes) == 3
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"rate_limited": 1}
    await ws.disconnect()
    await ws.finished()


async def test_a_shadow_refresh_limit_is_reported_once_per_window() -> None:
    guard, app, clock, decodes = build(fused=False, refresh_rate="1/minute", enforce=False)
    ws = await opened(app, mint(exp_in=600))
    for i in range(1, 5):
        await ws.send_text(refresh(mint(exp_in=600 + 100 * i, gen=i)))
    await ws.send_text("after")
    await ws.expect("websocket.send", text="after")
    assert ws.scope["ws_guard"].claims["gen"] == 4  # shadow mode: every refresh applies
    assert len(decodes) == 5
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"refresh_rate_limited": 1}
    clock.now += 60.0
    await ws.send_text(refresh(mint(exp_in=1100)))
    await ws.send_text(refresh(mint(exp_in=1200)))
    await ws.send_text("later")
    await ws.expect("websocket.send", text="later")
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"refresh_rate_limited": 2}
    await ws.disconnect()
    await ws.finished()


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
@pytest.mark.parametrize("earlier_by", [0, 1, 3600], ids=["same", "one-second", "an-hour"])
async def test_a_refresh_must_move_exp_forward(fused: bool, earlier_by: int) -> None:
    import jwt

    first = mint(exp_in=7200)
    exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    guard, app, _, _ = build(fused=fused)
    ws = await opened(app, first)
    await ws.send_text(refresh(mint(exp_in=None, exp=exp - earlier_by)))
    await ws.expect("websocket.close", code=1008, reason="token_stale")
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"token_stale": 1}


async def test_a_token_without_exp_cannot_be_extended() -> None:
    _, app, _, _ = build(require_exp=False)
    ws = await opened(app, mint(exp_in=None))
    await ws.send_text(refresh(mint(exp_in=600)))
    await ws.expect("websocket.close", code=1008, reason="token_stale")
    await ws.finished()
    # The other way round extends: no exp is later than any exp.
    _, app, _, _ = build(require_exp=False)
    ws = await opened(app, mint(exp_in=600))
    await ws.send_text(refresh(mint(exp_in=None, gen=2)))
    await ws.send_text("after")
    await ws.expect("websocket.send", text="after")
    assert ws.scope["ws_guard"].claims["gen"] == 2
    await ws.disconnect()
    await ws.finished()


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"iss": "https://a.example"}, {"iss": "https://b.example"}),
        ({"iss": "https://a.example"}, {}),  # the issuer dropped
        ({}, {"iss": "https://a.example"}),  # an issuer added
    ],
    ids=["other-issuer", "issuer-dropped", "issuer-added"],
)
async def test_a_refresh_keeps_the_issuer(first: dict[str, Any], second: dict[str, Any]) -> None:
    _, app, _, _ = build()
    ws = await opened(app, mint(exp_in=600, **first))
    await ws.send_text(refresh(mint(exp_in=700, **second)))
    await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.finished()


def test_user_keys_are_readable_unambiguous_and_bounded() -> None:
    assert user_key("https://a.example", "alice") == '["https://a.example","alice"]'
    assert user_key(None, "alice") == '[null,"alice"]'
    assert user_key(["https://a.example"], "alice") == '[false,"alice"]'
    # A separator inside either string cannot make two principals one key.
    assert user_key("a", "b,c") != user_key("a,b", "c")
    assert user_key('a","b', "c") != user_key("a", 'b","c')
    long = user_key("https://a.example", "x" * 500)
    assert long.startswith("sha256:")
    assert len(long) == len("sha256:") + 32
    assert long != user_key("https://a.example", "x" * 499)
    assert len(user_key("i" * 100, "s" * (MAX_USER_KEY - 110))) <= MAX_USER_KEY
