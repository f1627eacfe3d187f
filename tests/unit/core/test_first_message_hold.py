"""First-message auth holds the app's sends until the token is verified (in process).

The app accepts and sends "history" at once; until the first message's token
is verified nothing but the accept may reach the client. These tests drive
the guard with ScriptedWebSocket and an injected clock: every frame the
client would get is asserted in order, and the orderings of held sends,
cancels and verdicts are driven step by step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from tests.support.backends import joined
from tests.support.jwt_keys import SECRET, mint
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, load, rules
from ws_guard._core.connection import Connection
from ws_guard._core.tasks import Job, spawn
from ws_guard.testing import ManualClock, ScriptedWebSocket
from ws_guard.types import ASGIApp, Message, Receive, Scope, Send

HISTORY: Message = {"type": "websocket.send", "text": "history"}
ACCEPT: Message = {"type": "websocket.accept"}


def make_guard(
    clock: ManualClock, *, enforce: bool = True, extra: list[Any] | None = None, **options: Any
) -> Guard:
    token: list[Any] = [rules.from_first_message(0.3, **options)]
    if extra:
        token = [*extra, *token]
    auth = rules.JWTAuth(SECRET, algorithms=["HS256"], token=token, enforce=enforce)
    return Guard(rules=[auth], clock=clock)


def history_app(
    guard: Guard, before: tuple[Message, ...] = (HISTORY,), close: int | None = None
) -> ASGIApp:
    """Accept, send *before* at once (and close with *close*), then echo text."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send(ACCEPT)
        for message in before:
            await send(message)
        if close is not None:
            await send({"type": "websocket.close", "code": close, "reason": "bye"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": f"echo:{message['text']}"})

    return WSGuardMiddleware(app, guard=guard)


async def turns(n: int = 20) -> None:
    """Let every ready task run (no time passes: the clock is injected)."""
    for _ in range(n):
        await anyio.sleep(0)


def conn_of(ws: ScriptedWebSocket) -> Connection:
    conn: Connection = ws.scope["ws_guard"]._conn
    return conn


async def test_no_token_gets_the_accept_then_token_missing_and_never_the_history() -> None:
    clock = ManualClock()
    guard = make_guard(clock)
    ws = ScriptedWebSocket(history_app(guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await turns()
    assert ws.sent == [ACCEPT]  # the app's send is held
    assert conn_of(ws).scope["ws_guard"].state == "authenticating"
    assert guard.metrics.snapshot().pending_auth == 1
    clock.now += 0.29
    assert guard.scheduler.run_due() == 0
    clock.now += 0.02
    assert guard.scheduler.run_due() == 1
    await ws.expect("websocket.close", code=1008, reason="token_missing")
    await ws.disconnect(1008)
    await ws.finished()
    assert ws.sent == [ACCEPT, {"type": "websocket.close", "code": 1008, "reason": "token_missing"}]
    snap = guard.metrics.snapshot()
    assert snap.dropped_sends == 1  # the held history: dropped, never raised
    assert snap.pending_auth == 0
    assert snap.closes_by_rule == {"token_missing": 1}


async def test_valid_token_releases_the_history_first_then_echoes() -> None:
    guard = make_guard(ManualClock())
    ws = ScriptedWebSocket(history_app(guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(mint("alice"))
    await ws.expect("websocket.send", text="history")
    assert conn_of(ws).subject == "alice"
    assert guard.metrics.snapshot().pending_auth == 0
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="echo:hi")
    assert conn_of(ws).scope["ws_guard"].state == "open"
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().dropped_sends == 0


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ("not a token", "token_invalid"),
        ('{"token": 5}', "token_invalid"),
        ('{"type": "auth"}', "token_missing"),
        (mint("bob", exp_in=-5), "token_expired"),
        (mint("bob", key="another-secret-of-at-least-32-bytes!"), "token_invalid"),
    ],
)
async def test_a_bad_first_message_closes_and_the_history_never_goes_out(
    first: str, reason: str
) -> None:
    guard = make_guard(ManualClock())
    ws = ScriptedWebSocket(history_app(guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(first)
    await ws.expect("websocket.close", code=1008, reason=reason)
    await ws.disconnect(1008)
    await ws.finished()
    assert [m["type"] for m in ws.sent] == ["websocket.accept", "websocket.close"]
    snap = guard.metrics.snapshot()
    assert (snap.dropped_sends, snap.pending_auth) == (1, 0)


async def test_several_held_sends_and_a_binary_one_go_out_in_order() -> None:
    before: tuple[Message, ...] = (
        {"type": "websocket.send", "text": "one"},
        {"type": "websocket.send", "bytes": b"\x00\x01"},
        {"type": "websocket.send", "text": "three"},
    )
    guard = make_guard(ManualClock())
    ws = ScriptedWebSocket(history_app(guard, before))
    await ws.connect()
    await ws.expect("websocket.accept")
    await turns()
    assert ws.sent == [ACCEPT]
    await ws.send_text(mint())
    await ws.send_text("hi")
    for message in [*before, {"type": "websocket.send", "text": "echo:hi"}]:
        assert await ws.next() == message
    await ws.disconnect()
    await ws.finished()


async def test_an_app_close_before_the_verdict_goes_out_at_once() -> None:
    guard = make_guard(ManualClock())
    ws = ScriptedWebSocket(history_app(guard, before=(), close=4000))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=4000, reason="bye")  # not held
    await ws.disconnect(4000)
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert (snap.dropped_sends, snap.pending_auth) == (0, 0)
    assert snap.closes_by_initiator == {"app": 1}


async def test_the_client_leaving_before_its_token_drops_the_history() -> None:
    guard = make_guard(ManualClock())
    ws = ScriptedWebSocket(history_app(guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.disconnect(1001)
    await ws.finished()
    assert ws.sent == [ACCEPT]
    snap = guard.metrics.snapshot()
    assert (snap.dropped_sends, snap.pending_auth, snap.active_connections) == (1, 0, 0)
    assert snap.closes_by_code == {1001: 1}
    assert snap.closes_by_initiator == {"client": 1}
    assert len(guard.scheduler) == 0  # the timeout went with the connection


class Senders:
    """An app whose sends come from tasks the test starts and cancels."""

    def __init__(self) -> None:
        self.send: Send | None = None
        self.receive: Receive | None = None
        self.done = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(ACCEPT)
        self.send, self.receive = send, receive
        await self.done.wait()

    def sending(self, text: str) -> Job[None]:
        assert self.send is not None
        return spawn(self.send({"type": "websocket.send", "text": text}))

    async def held(self, *texts: str) -> list[Job[None]]:
        """One send task per text, each let run until held before the next starts.

        Tasks started together run in a fixed order on asyncio but not on
        trio (its scheduler may reverse a batch), so the order of the holds
        is made explicit.
        """
        jobs = []
        for text in texts:
            jobs.append(self.sending(text))
            await turns()
        return jobs


async def start_senders(guard: Guard) -> tuple[ScriptedWebSocket, Senders]:
    app = Senders()
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws, app


async def test_an_app_close_drops_the_sends_held_before_it() -> None:
    guard = make_guard(ManualClock())
    ws, app = await start_senders(guard)
    history = app.sending("history")
    await turns()
    assert app.send is not None
    await app.send({"type": "websocket.close", "code": 4001, "reason": "room closed"})
    await joined(history)  # returns, as a send after a guard close does
    await ws.expect("websocket.close", code=4001, reason="room closed")
    assert [m["type"] for m in ws.sent] == ["websocket.accept", "websocket.close"]
    assert guard.metrics.snapshot().dropped_sends == 1
    await ws.disconnect(4001)
    app.done.set()
    await ws.finished()


async def test_a_held_send_cancelled_while_waiting_is_never_sent() -> None:
    guard = make_guard(ManualClock())
    ws, app = await start_senders(guard)
    a, b, c = await app.held("a", "b", "c")
    await turns()
    b.cancel()
    await turns()
    assert b.cancelled()
    await ws.send_text(mint())
    assert [(await ws.next())["text"] for _ in range(2)] == ["a", "c"]
    await joined(a, c)
    d = app.sending("d")  # after the flush: the ordinary path
    await ws.expect("websocket.send", text="d")
    await joined(d)
    app.done.set()
    await ws.finished()
    assert guard.metrics.snapshot().dropped_sends == 0


@pytest.mark.parametrize("verdict_first", [True, False])
@pytest.mark.parametrize("cancelled", ["a", "b"])
async def test_a_send_cancelled_after_its_turn_came_passes_the_turn_on(
    cancelled: str, verdict_first: bool, anyio_backend: str
) -> None:
    """The verdict wakes the first held send; a cancel in the same step loses nothing else."""
    guard = make_guard(ManualClock())
    ws, app = await start_senders(guard)
    tasks = dict(zip("abc", await app.held("a", "b", "c"), strict=True))
    await turns()
    if verdict_first:  # the verdict, then the cancel, in one step
        conn_of(ws).verified()
        tasks[cancelled].cancel()
    else:
        tasks[cancelled].cancel()
        conn_of(ws).verified()
    await turns()
    sent = [m["text"] for m in ws.sent[1:]]
    if anyio_backend == "trio" and verdict_first and cancelled == "a":
        # trio delivers a cancel at the task's next checkpoint: a wait already
        # woken by its turn completes, so "a" goes out whole, then passes the turn on.
        assert sent == ["a", "b", "c"]
        assert tasks["a"].done()
        assert not tasks["a"].cancelled()
    else:
        assert sent == [name for name in "abc" if name != cancelled]
        assert tasks[cancelled].cancelled()
    assert conn_of(ws).scope["ws_guard"].state == "open"
    app.done.set()
    await ws.finished()


async def test_a_send_made_while_the_held_ones_flush_waits_its_turn() -> None:
    guard = make_guard(ManualClock())
    ws, app = await start_senders(guard)
    a, b = await app.held("a", "b")
    conn_of(ws).verified()
    late = app.sending("late")  # before a and b have run: it must not overtake them
    await joined(a, b, late)
    assert [m["text"] for m in ws.sent[1:]] == ["a", "b", "late"]
    app.done.set()
    await ws.finished()


async def test_a_guard_close_during_the_flush_drops_what_is_left() -> None:
    guard = make_guard(ManualClock())
    ws, app = await start_senders(guard)
    a, b = app.sending("a"), app.sending("b")
    await turns()
    conn = conn_of(ws)
    conn.verified()
    conn.close_soon(rules.JWTAuth(SECRET, algorithms=["HS256"]).expired)
    await joined(a, b)
    assert [m["type"] for m in ws.sent] == ["websocket.accept", "websocket.close"]
    assert guard.metrics.snapshot().dropped_sends == 2
    app.done.set()
    await ws.finished()


async def test_a_cancelled_receive_loses_no_verdict_and_no_message() -> None:
    guard = make_guard(ManualClock())
    ws, app = await start_senders(guard)
    assert app.receive is not None
    reading = spawn(app.receive())
    history = app.sending("history")
    await turns()
    reading.cancel()  # as wait_for does on a timeout
    await turns()
    await ws.send_text(mint("carol"))
    await ws.expect("websocket.send", text="history")
    await joined(history)
    await ws.send_text("next")
    with anyio.fail_after(2):
        assert await app.receive() == {"type": "websocket.receive", "text": "next"}
    assert conn_of(ws).subject == "carol"
    app.done.set()
    await ws.finished()


async def test_shadow_mode_holds_nothing() -> None:
    guard = make_guard(ManualClock(), enforce=False)
    ws = ScriptedWebSocket(history_app(guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.send", text="history")
    await ws.disconnect()
    await ws.finished()


# -- the bounds ----------------------------------------------------------------


async def open_tokenless(guard: Guard, ip: str) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(history_app(guard), client=(ip, 40000))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def refused(guard: Guard, ip: str) -> Message:
    ws = await open_tokenless(guard, ip)
    close = await ws.expect("websocket.close")
    await ws.finished()  # a refused handshake never reaches the app
    return close


async def test_per_ip_bound_refuses_1008_while_another_ip_still_connects() -> None:
    guard = make_guard(ManualClock(), max_pending=5, max_pending_per_ip=2)
    held = [await open_tokenless(guard, "10.0.0.1") for _ in range(2)]
    close = await refused(guard, "10.0.0.1")
    assert (close["code"], close["reason"]) == (1008, "too_many_unauthenticated")
    other = await open_tokenless(guard, "10.0.0.2")
    snap = guard.metrics.snapshot()
    assert snap.pending_auth == 3
    assert snap.closes_by_rule == {"too_many_unauthenticated": 1}
    # A token frees its slot: the same address may wait again.
    await held[0].send_text(mint())
    await held[0].expect("websocket.send", text="history")
    assert guard.metrics.snapshot().pending_auth == 2
    again = await open_tokenless(guard, "10.0.0.1")
    for ws in [*held, other, again]:
        await ws.disconnect()
        await ws.finished()
    assert guard.metrics.snapshot().pending_auth == 0


async def test_ipv6_clients_of_one_prefix_share_the_bound() -> None:
    guard = make_guard(ManualClock(), max_pending_per_ip=1)
    first = await open_tokenless(guard, "2001:db8::1")
    close = await refused(guard, "2001:db8::ffff")  # the same /64
    assert close["reason"] == "too_many_unauthenticated"
    other = await open_tokenless(guard, "2001:db8:0:1::1")  # another /64
    for ws in (first, other):
        await ws.disconnect()
        await ws.finished()


async def test_total_bound_refuses_1013_with_the_timeout_as_hint() -> None:
    guard = make_guard(ManualClock(), max_pending=3, max_pending_per_ip=2)
    held = [await open_tokenless(guard, f"10.0.1.{i}") for i in range(3)]
    close = await refused(guard, "10.0.1.9")
    assert (close["code"], close["reason"]) == (1013, "overloaded; retry-after=1")
    assert guard.metrics.snapshot().closes_by_rule == {"pending_auth": 1}
    for ws in held:
        await ws.disconnect()
        await ws.finished()
    assert guard.metrics.snapshot().pending_auth == 0


async def test_pending_connections_do_not_count_toward_connection_count() -> None:
    clock = ManualClock()
    auth = rules.JWTAuth(
        SECRET,
        algorithms=["HS256"],
        token=[rules.from_header(), rules.from_first_message(0.3)],
    )
    guard = Guard(rules=[auth], load=[load.ConnectionCount(limit=1)], clock=clock)
    waiting = [await open_tokenless(guard, f"10.0.2.{i}") for i in range(3)]
    header = [(b"authorization", f"Bearer {mint()}".encode())]
    user = ScriptedWebSocket(history_app(guard), headers=header)
    await user.connect()
    await user.expect("websocket.accept")
    await user.expect("websocket.send", text="history")  # admitted: the 3 waiting are not counted
    second = ScriptedWebSocket(history_app(guard), headers=header)
    await second.connect()
    await second.expect("websocket.accept")
    close = await second.expect("websocket.close")
    assert (close["code"], close["reason"].split(";")[0]) == (1013, "overloaded")
    for ws in [*waiting, user]:
        await ws.disconnect()
        await ws.finished()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_pending": 0}, "max_pending must be a positive integer, not 0"),
        ({"max_pending": True}, "max_pending must be a positive integer, not True"),
        ({"max_pending": 2.5}, "max_pending must be a positive integer, not 2.5"),
        ({"max_pending_per_ip": 0}, "max_pending_per_ip must be a positive integer, not 0"),
        ({"max_pending_per_ip": "3"}, "max_pending_per_ip must be a positive integer, not '3'"),
        (
            {"max_pending": 5, "max_pending_per_ip": 6},
            "max_pending_per_ip (6) must not exceed max_pending (5)",
        ),
    ],
)
def test_bad_bounds_are_configuration_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.from_first_message(1.0, **options)
    assert message in str(info.value)


def test_the_per_ip_default_never_exceeds_the_total() -> None:
    source: Callable[..., Any] = rules.from_first_message
    assert source(1.0).max_pending_per_ip == 10
    assert source(1.0, max_pending=4).max_pending_per_ip == 4
    assert source(1.0).max_pending == 1000


async def test_prometheus_otel_and_status_show_the_pending_count() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from ws_guard.metrics.otel import instrument
    from ws_guard.metrics.prometheus import make_registry

    guard = make_guard(ManualClock())
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrument(guard, meter_provider=provider)
    registry = make_registry(guard)

    def views() -> tuple[float, float, int]:
        exposition = generate_latest(registry).decode()
        (prom,) = [
            s.value
            for f in text_string_to_metric_families(exposition)
            for s in f.samples
            if s.name == "ws_guard_pending_auth"
        ]
        data = reader.get_metrics_data()
        assert data is not None
        (otel,) = [
            p.value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "ws_guard.connections.pending_auth"
            for p in m.data.data_points
        ]
        return prom, otel, guard.metrics.snapshot().as_dict()["pending_auth"]

    waiting = [await open_tokenless(guard, f"10.0.3.{i}") for i in range(2)]
    assert views() == (2, 2, 2)
    await waiting[0].send_text(mint())
    await waiting[0].expect("websocket.send", text="history")
    assert views() == (1, 1, 1)
    for ws in waiting:
        await ws.disconnect()
        await ws.finished()
    assert views() == (0, 0, 0)
    provider.shutdown()
