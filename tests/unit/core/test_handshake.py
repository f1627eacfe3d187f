"""Admission: accept-then-close by default, HTTP denial on request, releases."""

from __future__ import annotations

from types import SimpleNamespace

import anyio
import pytest

from tests.support.apps import Recorder
from tests.support.helpers import Deny, FixedRandom, Holds
from ws_guard import CloseEvent, Guard, WSGuardMiddleware, load, rules
from ws_guard.testing import ScriptedWebSocket


def guarded(app: object, guard: Guard, **kwargs: object) -> ScriptedWebSocket:
    return ScriptedWebSocket(WSGuardMiddleware(app, guard=guard), **kwargs)  # type: ignore[arg-type]


async def open_connection(app: object, guard: Guard) -> ScriptedWebSocket:
    ws = guarded(app, guard)
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def test_overload_is_accepted_then_closed_and_app_never_called() -> None:
    app = Recorder()
    guard = Guard(load=[load.ConnectionCount(limit=1)], random_source=FixedRandom(0.5))
    first = await open_connection(app, guard)
    second = guarded(app, guard)
    await second.connect()
    await second.finished()
    # retry-after = 1 s base * (1 + 0.5 jitter) = 1.5, to a tenth (the jitter survives).
    assert second.sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1013, "reason": "overloaded; retry-after=1.5"},
    ]
    assert app.calls == 1
    snap = guard.metrics.snapshot()
    assert (snap.handshakes_admitted, snap.handshakes_rejected) == (1, 1)
    assert dict(snap.closes_by_code) == {1013: 1}
    assert dict(snap.closes_by_rule) == {"overloaded": 1}
    assert snap.active_connections == 1
    (reading,) = snap.gauges
    assert (reading.name, reading.value, reading.limit, reading.tripped) == (
        "connections",
        1.0,
        1.0,
        True,
    )
    assert (reading.sheds, reading.shadow_sheds) == (1, 0)
    await first.disconnect()
    await first.finished()
    third = await open_connection(app, guard)  # room again
    await third.disconnect()
    await third.finished()
    assert guard.metrics.snapshot().handshakes_admitted == 2


async def test_rule_rejection_is_accepted_then_closed() -> None:
    app = Recorder()
    guard = Guard(rules=[Deny(1008, "token_invalid")])
    ws = guarded(app, guard)
    await ws.connect()
    await ws.finished()
    assert ws.sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1008, "reason": "token_invalid"},
    ]
    assert app.calls == 0
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_rule) == {"token_invalid": 1}
    assert (snap.handshakes_admitted, snap.handshakes_rejected, snap.active_connections) == (
        0,
        1,
        0,
    )
    assert snap.durations.total == 0  # never opened, so no duration


async def test_rejection_to_a_gone_client_is_quiet() -> None:
    guard = Guard(rules=[Deny()])
    ws = guarded(Recorder(), guard, raise_on_send_after_close=True)
    await ws.connect()
    await ws.disconnect()  # gone before the guard answers (the app task has not run yet)
    await ws.finished()  # the OSError of the accept is swallowed
    assert ws.sent == []
    assert dict(guard.metrics.snapshot().closes_by_rule) == {"token_invalid": 1}


async def test_held_rules_are_released_on_rejection_and_on_finish() -> None:
    holds = Holds()
    guard = Guard(rules=[Deny(), holds])  # Holds' stage runs first whatever the list order
    ws = guarded(Recorder(), guard)
    await ws.connect()
    await ws.finished()
    assert (holds.admitted, holds.released) == (1, 1)

    holds2 = Holds()
    guard2 = Guard(rules=[holds2])
    ws2 = await open_connection(Recorder(), guard2)
    assert holds2.released == 0
    await ws2.disconnect()
    await ws2.finished()
    assert (holds2.admitted, holds2.released) == (1, 1)


async def test_gauges_run_before_rules() -> None:
    holds = Holds()
    guard = Guard(rules=[holds], load=[load.ConnectionCount(limit=1)])
    first = await open_connection(Recorder(), guard)
    second = guarded(Recorder(), guard)
    await second.connect()
    await second.finished()
    assert holds.admitted == 1  # the shed connection never reached the rule
    await first.disconnect()
    await first.finished()


async def test_shadow_gauge_admits_and_counts() -> None:
    app = Recorder()
    gauge = load.ConnectionCount(limit=1, enforce=False)
    guard = Guard(load=[gauge])
    first = await open_connection(app, guard)
    second = await open_connection(app, guard)
    snap = guard.metrics.snapshot()
    assert dict(snap.shadow_breaches_by_rule) == {"overloaded": 1}
    assert (snap.active_connections, snap.peak_connections) == (2, 2)
    assert (gauge.sheds, gauge.shadow_sheds) == (0, 1)
    for ws in (first, second):
        await ws.disconnect()
        await ws.finished()


async def test_shadow_rule_admits_and_counts() -> None:
    guard = Guard(rules=[Deny(enforce=False)])
    ws = await open_connection(Recorder(), guard)
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert dict(snap.shadow_breaches_by_rule) == {"token_invalid": 1}
    assert snap.handshakes_rejected == 0


@pytest.mark.parametrize(
    ("deny", "status", "retry_after", "body"),
    [
        (Deny(1013, "overloaded", 4.2), 503, b"5", b"overloaded; retry-after=5"),
        (Deny(1012, "restarting", 1.0), 503, b"1", b"restarting; retry-after=1"),
        (Deny(1008, "rate_limited", 7), 429, b"7", b"rate_limited; retry-after=7"),
        (
            Deny(1008, "connect_rate_limited", 0.2),
            429,
            b"1",
            b"connect_rate_limited; retry-after=1",
        ),
        (Deny(1008, "too_many_connections"), 429, None, b"too_many_connections"),
        (Deny(1008, "token_invalid"), 403, None, b"token_invalid"),
        (Deny(1008, "token_missing"), 403, None, b"token_missing"),
        (Deny(1011, "internal_error"), 500, None, b"internal_error"),
    ],
    ids=lambda v: str(v) if isinstance(v, int) else None,
)
async def test_http_denial_status_headers_and_body(
    deny: Deny, status: int, retry_after: bytes | None, body: bytes
) -> None:
    app = Recorder()
    guard = Guard(rules=[deny], reject="http")
    ws = guarded(app, guard)
    await ws.connect()
    await ws.finished()
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if retry_after is not None:
        headers.append((b"retry-after", retry_after))
    assert ws.sent == [
        {"type": "websocket.http.response.start", "status": status, "headers": headers},
        {"type": "websocket.http.response.body", "body": body},
    ]
    assert app.calls == 0
    snap = guard.metrics.snapshot()
    assert snap.handshakes_rejected == 1
    # Counted as what the client got: the HTTP status, not the decision's code.
    assert dict(snap.closes_by_code) == {status: 1}
    assert dict(snap.closes_by_initiator) == {"guard": 1}


async def test_http_denial_is_reported_to_on_close_as_its_status() -> None:
    events: list[CloseEvent] = []
    guard = Guard(rules=[Deny(1008, "rate_limited", 7)], reject="http", on_close=events.append)
    ws = guarded(Recorder(), guard)
    await ws.connect()
    await ws.finished()
    assert [(e.code, e.reason, e.initiator) for e in events] == [
        (429, "rate_limited; retry-after=7", "guard")
    ]


async def test_http_denial_for_load_gauge() -> None:
    guard = Guard(
        load=[load.ConnectionCount(limit=1)], reject="http", random_source=FixedRandom(0.0)
    )
    first = await open_connection(Recorder(), guard)
    second = guarded(Recorder(), guard)
    await second.connect()
    await second.finished()
    assert second.sent[0] == {
        "type": "websocket.http.response.start",
        "status": 503,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1")],
    }
    assert second.sent[1] == {
        "type": "websocket.http.response.body",
        "body": b"overloaded; retry-after=1",
    }
    await first.disconnect()
    await first.finished()


async def test_http_denial_falls_back_without_the_extension() -> None:
    guard = Guard(rules=[Deny(1008, "rate_limited", 3)], reject="http")
    ws = guarded(Recorder(), guard, http_response=False)
    await ws.connect()
    await ws.finished()
    assert ws.sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 1008, "reason": "rate_limited; retry-after=3"},
    ]
    # A close frame went out, so the close code is what is counted.
    assert dict(guard.metrics.snapshot().closes_by_code) == {1008: 1}


async def test_app_http_response_before_accept_passes_through() -> None:
    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        await receive()  # type: ignore[operator]
        await send({"type": "websocket.http.response.start", "status": 401, "headers": []})  # type: ignore[operator]
        await send({"type": "websocket.http.response.body", "body": b"no"})  # type: ignore[operator]

    guard = Guard()
    ws = guarded(app, guard)
    await ws.connect()
    await ws.finished()
    assert [m["type"] for m in ws.sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    snap = guard.metrics.snapshot()
    # Counted as what the server sends: the app's HTTP status, no close frame.
    assert dict(snap.closes_by_code) == {401: 1}
    assert dict(snap.closes_by_initiator) == {"app": 1}
    assert snap.active_connections == 0


async def test_connect_message_is_replayed_to_the_app() -> None:
    app = Recorder()
    guard = Guard(rules=[Holds()])
    ws = await open_connection(app, guard)
    await ws.disconnect()
    await ws.finished()
    assert app.received[0] == {"type": "websocket.connect"}


async def test_accept_hooks_edit_accept_message() -> None:
    class Subprotocol(rules.Rule):
        def on_accept(self, conn: object, message: dict) -> None:  # type: ignore[override,type-arg]
            message["subprotocol"] = "chat.v1"

    guard = Guard(rules=[Subprotocol()])
    ws = guarded(Recorder(), guard, subprotocols=["chat.v1"])
    await ws.connect()
    await ws.expect("websocket.accept", subprotocol="chat.v1")
    await ws.disconnect()
    await ws.finished()


class SlowRelease(Holds):
    """A slot rule whose release suspends, as a Redis ``ZREM`` does."""

    async def release(self, conn: object) -> None:
        await anyio.sleep(0)
        self.released += 1


async def finish_cancelled(guard: Guard, headers: list[tuple[bytes, bytes]] | None = None) -> int:
    """Admit one connection, open it, then finish it inside a scope already cancelled.

    What a server that cancels the handler at the client's disconnect does.
    Returns the deadlines the guard's scheduler held before the finish.
    """
    from ws_guard._core.connection import Connection

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: object) -> None:
        return None

    scope = {"type": "websocket", "path": "/ws", "headers": headers or []}
    conn = Connection(guard, scope, receive, send)
    assert await conn.handshake()
    await conn.send({"type": "websocket.accept"})
    assert guard.metrics.snapshot().active_connections == 1
    armed = len(guard.scheduler)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await conn.finish()
    return armed


async def test_finish_in_a_cancelled_scope_with_nothing_held_still_counts_the_end() -> None:
    guard = Guard(rules=[rules.MaxMessageSize(10)])
    await finish_cancelled(guard)
    snap = guard.metrics.snapshot()
    assert (snap.active_connections, snap.durations.total) == (0, 1)
    assert len(guard.live_connections) == 0


async def test_finish_in_a_cancelled_scope_still_releases_a_slot_that_suspends() -> None:
    slow = SlowRelease()
    guard = Guard(rules=[slow])
    await finish_cancelled(guard)
    assert (slow.admitted, slow.released) == (1, 1)
    snap = guard.metrics.snapshot()
    assert (snap.active_connections, snap.durations.total) == (0, 1)


class QuickRelease(Holds):
    """A slot rule whose release never suspends, and says so."""

    release_suspends = False


async def test_finish_in_a_cancelled_scope_releases_a_slot_that_never_suspends() -> None:
    quick = QuickRelease()
    guard = Guard(rules=[quick])
    await finish_cancelled(guard)
    assert (quick.admitted, quick.released) == (1, 1)
    assert guard.metrics.snapshot().active_connections == 0


async def test_finish_in_a_cancelled_scope_disarms_a_jwt_session() -> None:
    from tests.support.jwt_keys import SECRET, mint

    guard = Guard(rules=[rules.JWTAuth(SECRET, algorithms=["HS256"])])
    token = mint()
    armed = await finish_cancelled(guard, [(b"authorization", f"Bearer {token}".encode())])
    assert (armed, len(guard.scheduler)) == (1, 0)  # the token's expiry deadline is gone
    assert guard.metrics.snapshot().active_connections == 0


def test_jwt_release_never_suspends_as_it_declares() -> None:
    """JWTAuth.release_suspends is False: its release must run to the end in one step."""
    rule = rules.JWTAuth("s" * 32, algorithms=["HS256"])
    assert rules.JWTAuth.release_suspends is False
    assert rules.Rule.release_suspends is True
    conn = SimpleNamespace(extra={})  # release reads only conn.extra
    step = rule.release(conn)  # type: ignore[arg-type]
    with pytest.raises(StopIteration):
        step.send(None)
