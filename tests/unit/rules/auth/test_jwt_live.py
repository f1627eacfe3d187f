"""Live expiry, in-band refresh and first-message auth, in process on an injected clock."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.apps import echo
from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import SECRET, mint
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ManualClock as Clock
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import ASGIApp

T0 = 1000.0


def setup(app: ASGIApp = echo, **options: object) -> tuple[Guard, WSGuardMiddleware, Clock]:
    options.setdefault("algorithms", ["HS256"])
    clock = Clock(T0)
    # app_exit_timeout=None: these tests jump the clock far past a close and
    # count the deadlines that fire; the exit deadline would be one more.
    guard = Guard(
        rules=[rules.JWTAuth(SECRET, **options)],  # type: ignore[arg-type]
        clock=clock,
        app_exit_timeout=None,
    )
    return guard, WSGuardMiddleware(app, guard=guard), clock


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def loop_time_of(exp: int) -> float:
    """Where on the injected clock a wall-clock ``exp`` falls (as the guard converts it)."""
    return T0 + (exp - time.time())


def refresh_message(token: str) -> str:
    return json.dumps({"type": "auth.refresh", "token": token})


async def open_socket(app: WSGuardMiddleware, token: str) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, headers=bearer(token))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def test_idle_socket_closes_at_exp_within_100ms() -> None:
    guard, app, _ = setup()
    token = mint(exp_in=30)
    ws = await open_socket(app, token)
    deadline = loop_time_of(_exp(token))
    assert len(guard.scheduler) == 1
    assert guard.scheduler.run_due(deadline - 0.1) == 0
    assert not ws.closed
    assert guard.scheduler.run_due(deadline + 0.1) == 1
    await ws.expect("websocket.close", code=1008, reason="token_expired")
    await ws.disconnect(1008)  # the client's answer to the close frame
    await ws.finished()  # the echo app got its disconnect and returned
    assert len(guard.scheduler) == 0
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"token_expired": 1}
    assert snap.closes_by_initiator == {"guard": 1}


def _exp(token: str) -> int:
    import jwt

    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


async def test_leeway_moves_the_live_deadline() -> None:
    guard, app, _ = setup(leeway=5)
    token = mint(exp_in=30)
    ws = await open_socket(app, token)
    deadline = loop_time_of(_exp(token)) + 5
    assert guard.scheduler.run_due(deadline - 0.1) == 0
    assert guard.scheduler.run_due(deadline + 0.1) == 1
    await ws.expect("websocket.close", code=1008, reason="token_expired")
    await ws.disconnect(1008)
    await ws.finished()


async def test_no_exp_means_no_deadline() -> None:
    guard, app, _ = setup(require_exp=False)
    ws = await open_socket(app, mint(exp_in=None))
    assert len(guard.scheduler) == 0
    await ws.disconnect()
    await ws.finished()


async def test_disconnect_cancels_the_deadline() -> None:
    guard, app, _ = setup()
    sockets = [await open_socket(app, mint(f"u{i}", exp_in=30 + i)) for i in range(5)]
    assert len(guard.scheduler) == 5
    for ws in sockets:
        await ws.disconnect()
        await ws.finished()
    assert len(guard.scheduler) == 0


async def test_valid_refresh_moves_the_deadline_and_is_never_seen_by_the_app() -> None:
    guard, app, _ = setup(app=whoami)
    first = mint("alice", exp_in=30)
    ws = await open_socket(app, first)
    await ws.send_text(refresh_message(mint("alice", exp_in=120, gen=2)))
    await ws.send_text("after")
    who = json.loads((await ws.expect("websocket.send"))["text"])
    assert who["claims"]["gen"] == 2  # the app's first message is "after"
    await ws.expect("websocket.send", text="after")
    assert len(guard.scheduler) == 1  # the old deadline is gone, not merely shadowed
    assert guard.scheduler.run_due(loop_time_of(_exp(first)) + 1) == 0
    assert not ws.closed
    assert guard.scheduler.run_due(T0 + 121) == 1
    await ws.expect("websocket.close", code=1008, reason="token_expired")
    await ws.disconnect(1008)
    await ws.finished()


@pytest.mark.parametrize(
    "refresh",
    [
        refresh_message("junk"),
        refresh_message(mint("mallory", exp_in=120)),  # another subject
        refresh_message(mint("alice", exp_in=-10)),  # already expired
        refresh_message(mint("alice", key="x" * 32)),  # wrong key
        json.dumps({"type": "auth.refresh"}),  # no token at all
        json.dumps({"type": "auth.refresh", "token": 42}),
    ],
    ids=["malformed", "other-subject", "expired", "wrong-key", "no-token", "not-a-string"],
)
async def test_bad_refresh_closes_token_invalid(refresh: str) -> None:
    guard, app, _ = setup(app=whoami)
    ws = await open_socket(app, mint("alice", exp_in=30))
    await ws.send_text(refresh)
    await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.finished()
    assert ws.sent[1:] == [{"type": "websocket.close", "code": 1008, "reason": "token_invalid"}]
    assert guard.metrics.snapshot().closes_by_rule == {"token_invalid": 1}
    assert len(guard.scheduler) == 0


@pytest.mark.parametrize(
    "message",
    [
        '{"type": "chat", "text": "auth.refresh"}',  # mentions it, is not one
        '{"type": "chat", "note": "\\"auth.refresh\\""}',
        '"auth.refresh" but not JSON',
        "[1, 2]",
    ],
)
async def test_messages_that_are_not_refreshes_reach_the_app(message: str) -> None:
    _, app, _ = setup()
    ws = await open_socket(app, mint())
    await ws.send_text(message)
    await ws.expect("websocket.send", text=message)
    await ws.send_bytes(refresh_message(mint()).encode())  # binary frames are never refreshes
    await ws.expect("websocket.send", bytes=refresh_message(mint()).encode())
    await ws.disconnect()
    await ws.finished()


async def test_refresh_shape_is_configurable() -> None:
    _, app, _ = setup(refresh="renew", refresh_field="jwt")
    ws = await open_socket(app, mint())
    await ws.send_text(json.dumps({"type": "renew", "jwt": mint(gen=3, exp_in=7200)}))
    await ws.send_text(refresh_message(mint()))  # the default shape is now app content
    await ws.expect("websocket.send", text=refresh_message(mint()))
    assert ws.scope["ws_guard"].claims["gen"] == 3
    await ws.disconnect()
    await ws.finished()


async def test_refresh_matcher_callable_and_refresh_off() -> None:
    def matcher(message: dict) -> str | None:
        text = message.get("text") or ""
        return text[len("RENEW ") :] if text.startswith("RENEW ") else None

    _, app, _ = setup(refresh=matcher)
    ws = await open_socket(app, mint())
    await ws.send_text("RENEW " + mint(gen=4, exp_in=7200))  # a refresh must move exp on
    await ws.send_text("x")
    await ws.expect("websocket.send", text="x")
    assert ws.scope["ws_guard"].claims["gen"] == 4
    await ws.disconnect()
    await ws.finished()

    _, off, _ = setup(refresh=None)
    ws = await open_socket(off, mint())
    await ws.send_text(refresh_message(mint()))
    await ws.expect("websocket.send", text=refresh_message(mint()))
    await ws.disconnect()
    await ws.finished()


async def test_expiring_notice_is_sent_before_the_deadline() -> None:
    guard, app, clock = setup(expiring_notice=10)
    token = mint(exp_in=60)
    ws = await open_socket(app, token)
    deadline = loop_time_of(_exp(token))
    assert len(guard.scheduler) == 2
    clock.now = deadline - 10.1
    assert guard.scheduler.run_due() == 0
    clock.now = deadline - 9.9
    assert guard.scheduler.run_due() == 1
    notice = await ws.expect("websocket.send")
    assert json.loads(notice["text"]) == {"type": "auth.expiring", "in": 10}
    await ws.send_text(refresh_message(mint(exp_in=120)))  # the notice's purpose
    await ws.send_text("x")
    await ws.expect("websocket.send", text="x")
    assert len(guard.scheduler) == 2  # new expiry, new notice
    await ws.disconnect()
    await ws.finished()


async def test_expiring_notice_is_off_by_default() -> None:
    guard, app, _ = setup()
    ws = await open_socket(app, mint(exp_in=60))
    assert len(guard.scheduler) == 1
    await ws.disconnect()
    await ws.finished()


async def test_shadow_expiry_is_counted_and_the_socket_lives() -> None:
    guard, app, _ = setup(enforce=False)
    token = mint(exp_in=30)
    ws = await open_socket(app, token)
    assert guard.scheduler.run_due(loop_time_of(_exp(token)) + 0.1) == 1
    await ws.send_text("still here")
    await ws.expect("websocket.send", text="still here")
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"token_expired": 1}
    assert snap.closes_by_rule == {}


# -- first message -------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    ["{t}", "  {t}\n", '{{"type": "auth", "token": "{t}"}}'],
    ids=["bare", "whitespace", "json"],
)
async def test_first_message_authenticates_and_is_consumed(payload: str) -> None:
    guard, app, _ = setup(app=whoami, token=rules.from_first_message(5))
    ws = ScriptedWebSocket(app)
    await ws.connect()
    await ws.expect("websocket.accept")
    assert ws.scope["ws_guard"].subject is None  # not known at admission
    assert len(guard.scheduler) == 1  # the first-message timeout
    await ws.send_text(payload.format(t=mint("fm", exp_in=30)))
    await ws.send_text("hello")
    who = json.loads((await ws.expect("websocket.send"))["text"])
    assert who["sub"] == "fm"
    await ws.expect("websocket.send", text="hello")
    assert len(guard.scheduler) == 1  # timeout replaced by the expiry
    await ws.disconnect()
    await ws.finished()


async def test_first_message_binary_token() -> None:
    _, app, _ = setup(app=whoami, token=rules.from_first_message(5))
    ws = ScriptedWebSocket(app)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_bytes(mint("bin").encode())
    await ws.send_text("x")
    assert json.loads((await ws.expect("websocket.send"))["text"])["sub"] == "bin"
    await ws.disconnect()
    await ws.finished()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("junk", "token_invalid"),
        ('{"type": "auth"}', "token_missing"),
        ("", "token_missing"),
        (mint(exp_in=-5), "token_expired"),
        ("x" * 20000, "token_invalid"),
    ],
)
async def test_bad_first_message_closes(payload: str, reason: str) -> None:
    guard, app, _ = setup(token=rules.from_first_message(5))
    ws = ScriptedWebSocket(app)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(payload)
    await ws.expect("websocket.close", code=1008, reason=reason)
    await ws.finished()
    assert len(guard.scheduler) == 0


async def test_first_message_timeout_closes_token_missing() -> None:
    guard, app, clock = setup(token=rules.from_first_message(5))
    ws = ScriptedWebSocket(app)
    await ws.connect()
    await ws.expect("websocket.accept")
    assert guard.scheduler.run_due(T0 + 4.9) == 0
    assert guard.scheduler.run_due(T0 + 5.0) == 1
    await ws.expect("websocket.close", code=1008, reason="token_missing")
    await ws.disconnect(1008)
    await ws.finished()
    del clock


async def test_handshake_token_skips_the_first_message() -> None:
    _, app, _ = setup(app=whoami, token=[rules.from_header(), rules.from_first_message(5)])
    ws = await open_socket(app, mint("hdr"))
    await ws.send_text("first app message")
    who = json.loads((await ws.expect("websocket.send"))["text"])
    assert who["sub"] == "hdr"
    await ws.expect("websocket.send", text="first app message")
    await ws.disconnect()
    await ws.finished()


@pytest.mark.parametrize(
    "exp", [10**400, 2**63, 253_402_300_799 + 10], ids=["1e400", "2^63", "9999+10s"]
)
async def test_an_exp_past_year_9999_is_admitted_and_armed_at_the_cap(exp: int) -> None:
    # An issuer may sign any integer; 10**400 has no float, and converting it
    # once raised OverflowError out of the guard at the handshake.
    guard, app, _ = setup()
    ws = await open_socket(app, mint(exp_in=None, exp=exp))
    assert len(guard.scheduler) == 1
    assert guard.scheduler.run_due(T0 + 10**6) == 0
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    # A refresh to another such token extends nothing: both read as the cap.
    await ws.send_text(refresh_message(mint(exp_in=None, exp=exp + 1)))
    await ws.expect("websocket.close", code=1008, reason="token_stale")
