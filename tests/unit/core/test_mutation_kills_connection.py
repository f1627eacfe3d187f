"""The per-connection object's less travelled paths, in process, with exact counts.

App crashes that are really a client leaving, an accept the server refuses,
app closes whose code or reason ws_guard cannot read, a scope without
headers or extensions, ws_guard's own notices, and the cancel of an app
that outlives its connection. Each test pins a behaviour of
``_core/connection.py`` that a small change could break without any other
in-process test noticing; states are read where the app reads them, at
``scope["ws_guard"]``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import HeaderSubject, user
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.closes import CloseEvent
from ws_guard._core.decisions import Close
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Receive, Scope, Send

if sys.version_info >= (3, 11):
    from builtins import ExceptionGroup
else:  # anyio's backport on 3.10
    from exceptiongroup import ExceptionGroup


def guarded(app: Any, **options: Any) -> tuple[Any, Guard, list[CloseEvent]]:
    events: list[CloseEvent] = []
    guard = Guard(rules=[rules.MaxMessageSize(1024)], on_close=events.append, **options)
    return WSGuardMiddleware(app, guard=guard), guard, events


class ClientDisconnected(OSError):
    """Named as uvicorn's: ws_guard matches the class name, not an import."""


class WebSocketDisconnect(Exception):
    """Named as Starlette's, which raises it from uvicorn's ClientDisconnected."""


class GoneAfterAll(ClientDisconnected):
    """A subclass: matched through the class's MRO."""


@pytest.mark.parametrize("error", [WebSocketDisconnect, GoneAfterAll])
async def test_an_app_that_trips_over_a_gone_client_is_counted_as_the_client_leaving(
    error: type[Exception],
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        # A send to a gone client, refused by the server and turned into the
        # app's exception (as Starlette does): the client left, not the app.
        if error is GoneAfterAll:
            raise GoneAfterAll("send to a gone client")  # the server's error itself
        try:
            raise ClientDisconnected("send to a gone client")
        except ClientDisconnected as refused:
            raise error("the client left") from refused

    guarded_app, guard, events = guarded(app)
    ws = ScriptedWebSocket(guarded_app)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    with pytest.raises(error):
        await ws.finished()
    assert ws.sent == [{"type": "websocket.accept"}]  # no 1011 frame to a gone client
    assert ws.scope["ws_guard"].state == "closed"
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1006: 1}
    assert snap.closes_by_initiator == {"client": 1}
    [event] = events
    assert (event.code, event.initiator, event.rule) == (1006, "client", None)
    assert event.connection_id == ws.scope["ws_guard"].id


async def test_an_app_crash_gets_1011_and_the_state_reads_closed() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise RuntimeError("bug")

    guarded_app, _, events = guarded(app)
    ws = ScriptedWebSocket(guarded_app)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=1011, reason="internal_error")
    with pytest.raises(RuntimeError):
        await ws.finished()
    assert ws.scope["ws_guard"].state == "closed"
    assert [(e.code, e.initiator, e.rule) for e in events] == [(1011, "app", "internal_error")]


async def test_an_accept_the_server_refuses_is_the_client_leaving() -> None:
    """uvicorn raises on a send to a client that left; the app may catch it and return."""
    proceed = asyncio.Event()
    states: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await proceed.wait()
        try:
            await send({"type": "websocket.accept"})
        except OSError:
            states.append(scope["ws_guard"].state)
            return

    guarded_app, guard, events = guarded(app)
    ws = ScriptedWebSocket(guarded_app, raise_on_send_after_close=True)
    await ws.connect()
    await ws.disconnect(1001)
    await asyncio.sleep(0)
    proceed.set()
    await ws.finished()
    assert states == ["closed"]
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1006: 1}  # not 1000 for an app that returned
    assert snap.closes_by_initiator == {"client": 1}
    assert [(e.code, e.initiator) for e in events] == [(1006, "client")]


@pytest.mark.parametrize(
    ("code", "reason", "counted"),
    [
        pytest.param(None, "", 1000, id="code-none"),
        pytest.param("4000", "", 1000, id="code-str"),
        pytest.param(True, "", 1000, id="code-bool"),
        pytest.param(4001, ["loc", "msg"], 4001, id="reason-list"),
        pytest.param(4002, None, 4002, id="reason-none"),
    ],
)
async def test_an_app_close_ws_guard_cannot_read_goes_out_untouched_and_counts(
    code: object, reason: object, counted: int
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": reason})

    guarded_app, guard, _ = guarded(app)
    ws = ScriptedWebSocket(guarded_app)
    await ws.connect()
    await ws.expect("websocket.accept")
    assert await ws.next() == {"type": "websocket.close", "code": code, "reason": reason}
    await ws.finished()
    assert ws.scope["ws_guard"].state == "closed"
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {counted: 1}
    assert snap.closes_by_initiator == {"app": 1}


async def test_a_long_app_reason_is_cut_to_123_bytes() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "é" * 100})

    guarded_app, _, _ = guarded(app)
    ws = ScriptedWebSocket(guarded_app)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=4000, reason="é" * 61)  # 122 bytes: no half character
    await ws.finished()


async def test_a_scope_without_headers_reads_as_no_headers() -> None:
    guard = Guard(rules=[HeaderSubject()])
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), headers=user("alice"))
    del ws.scope["headers"]
    await ws.connect()
    await ws.expect("websocket.accept")
    assert ws.scope["ws_guard"].subject is None
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    await ws.disconnect()
    await ws.finished()


async def test_http_denial_without_the_extension_key_falls_back_to_accept_then_close() -> None:
    guard = Guard(rules=[rules.ConnectRate("1/minute")], reject="http")
    app = WSGuardMiddleware(echo, guard=guard)
    first = ScriptedWebSocket(app)
    await first.connect()
    await first.expect("websocket.accept")
    await first.disconnect()
    await first.finished()
    ws = ScriptedWebSocket(app)
    del ws.scope["extensions"]  # a server that names no extensions at all
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=1008, reason="connect_rate_limited; retry-after=60")
    await ws.finished()
    assert guard.metrics.snapshot().handshakes_rejected == 1
    await guard.shutdown()


async def test_a_notice_goes_out_only_while_open_and_leaves_nothing_behind() -> None:
    guarded_app, _, _ = guarded(echo)
    ws = ScriptedWebSocket(guarded_app)
    await ws.connect()
    await ws.expect("websocket.accept")
    conn = ws.scope["ws_guard"]._conn
    assert conn.send_soon({"type": "websocket.send", "text": "notice"}) is True
    await ws.expect("websocket.send", text="notice")
    assert conn._asides.task is None  # the queue's task ended with the queue
    assert conn._asides.pending == 0
    await ws.disconnect()
    await ws.finished()
    assert conn.send_soon({"type": "websocket.send", "text": "late"}) is False
    assert ws.sent[-1] == {"type": "websocket.send", "text": "notice"}


async def test_an_app_that_outlives_its_close_is_cancelled_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()

    async def stubborn(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        started.set()
        await asyncio.sleep(30)  # never reads again

    guarded_app, guard, _ = guarded(stubborn, app_exit_timeout=0.0)
    ws = ScriptedWebSocket(guarded_app, path="/ws/room")
    await ws.connect()
    await ws.expect("websocket.accept")
    await started.wait()
    conn = ws.scope["ws_guard"]._conn
    with caplog.at_level(logging.INFO, logger="ws_guard"):
        conn.close_soon(Close(1008, "test_close", "test_rule"))
        await ws.expect("websocket.close", code=1008, reason="test_close")
        await ws.finished(timeout=5)
    assert conn.cancelled_by_guard is True
    messages = [r.getMessage() for r in caplog.records if "cancelled" in r.getMessage()]
    assert messages == [
        "ws_guard cancelled an app handler still running 0.0 s after its connection "
        "was closed (code=1008) path=/ws/room"
    ]
    assert guard.metrics.snapshot().closes_by_rule == {"test_rule": 1}


async def app_that_closes_while_a_receive_waits(
    received: list[dict[str, Any]], *, first: bool = False
) -> Any:
    """Accept, start a receive, close from the app: what does that receive return?"""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        if first:
            received.append(await receive())
        pending = asyncio.ensure_future(receive())
        await asyncio.sleep(0)  # the receive is waiting on the server
        await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
        received.append(await pending)

    return app


async def test_a_refused_frame_after_the_app_closed_is_dropped_not_delivered() -> None:
    # A rate on a shared key is checked rule by rule (no fused run), so the
    # app's receive is the connection's own.
    received: list[dict[str, Any]] = []
    guard = Guard(rules=[rules.MessageRate("1/minute", key=rules.by_ip)])
    assert guard.plan.lead_run is None
    app = await app_that_closes_while_a_receive_waits(received, first=True)
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("one")  # the minute's only message
    await ws.expect("websocket.close", code=4000, reason="bye")
    await ws.send_text("two")  # over the rate: checked, then dropped
    await ws.disconnect(1000)
    await ws.finished()
    assert received == [
        {"type": "websocket.receive", "text": "one"},
        {"type": "websocket.disconnect", "code": 1000, "reason": ""},
    ]
    assert guard.metrics.snapshot().closes_by_code == {4000: 1}  # no second close
    await guard.shutdown()


async def test_a_message_read_for_a_pending_token_after_the_app_closed_is_not_delivered() -> None:
    received: list[dict[str, Any]] = []
    guard = Guard(
        rules=[rules.JWTAuth("s" * 32, algorithms=["HS256"], token=rules.from_first_message(5.0))]
    )
    app = WSGuardMiddleware(await app_that_closes_while_a_receive_waits(received), guard=guard)
    ws = ScriptedWebSocket(app)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=4000, reason="bye")
    await ws.send_text("not a token")  # read by the token reader after the close: judged
    await ws.disconnect(1000)
    await ws.finished()
    assert received == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]
    await guard.shutdown()


async def test_a_crash_whose_1011_cannot_be_sent_is_the_client_leaving() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await gone.wait()
        raise RuntimeError("bug")

    gone = asyncio.Event()
    guarded_app, guard, events = guarded(app)
    ws = ScriptedWebSocket(guarded_app, raise_on_send_after_close=True)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.disconnect(1001)  # the app never reads it; its 1011 then fails to send
    gone.set()
    with pytest.raises(RuntimeError):
        await ws.finished()
    assert ws.sent == [{"type": "websocket.accept"}]
    assert guard.metrics.snapshot().closes_by_code == {1006: 1}
    assert [(e.code, e.initiator, e.connection_id) for e in events] == [
        (1006, "client", ws.scope["ws_guard"].id)
    ]


async def test_a_held_decision_that_raises_closes_1011_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guarded_app, guard, _ = guarded(echo)
    ws = ScriptedWebSocket(guarded_app)
    await ws.connect()
    await ws.expect("websocket.accept")
    conn = ws.scope["ws_guard"]._conn
    error = RuntimeError("a bug while deciding")

    async def deciding() -> Close | None:
        raise error

    conn.hold(deciding())  # applied by its own callback: no receive needs to run
    await ws.expect("websocket.close", code=1011, reason="internal_error")
    records = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in records] == ["ws_guard could not decide a held message"]
    assert records[0].exc_info is not None
    assert records[0].exc_info[1] is error
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"internal_error": 1}


async def test_an_app_that_returns_while_open_is_closed_1000_and_reported() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})

    guarded_app, guard, events = guarded(app)
    ws = ScriptedWebSocket(guarded_app)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=1000, reason="")
    await ws.finished()
    assert ws.scope["ws_guard"].state == "closed"
    assert [(e.code, e.initiator, e.connection_id) for e in events] == [
        (1000, "app", ws.scope["ws_guard"].id)
    ]
    assert guard.metrics.snapshot().closes_by_initiator == {"app": 1}


async def test_an_app_that_denies_with_an_http_response_gets_no_close_after_it() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 403, "headers": []})
        await send({"type": "websocket.http.response.body", "body": b"no"})

    guarded_app, guard, _ = guarded(app)
    ws = ScriptedWebSocket(guarded_app)
    await ws.connect()
    await ws.finished()
    assert ws.sent == [
        {"type": "websocket.http.response.start", "status": 403, "headers": []},
        {"type": "websocket.http.response.body", "body": b"no"},
    ]
    assert ws.scope["ws_guard"].state == "closed"
    # Counted as what the server sent: the app's own HTTP status (docs/observability.md).
    assert guard.metrics.snapshot().closes_by_code == {403: 1}


async def test_a_receive_waits_for_a_held_decision_then_reads_on() -> None:
    received: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        decision: asyncio.Future[Close | None] = asyncio.get_running_loop().create_future()
        scope["ws_guard"]._conn.hold(decision)
        asyncio.get_running_loop().call_soon(decision.set_result, None)  # nothing to close
        received.append(await receive())

    guard = Guard(rules=[rules.MessageRate("10/minute", key=rules.by_ip)])
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("after the decision")
    await ws.expect("websocket.close", code=1000)
    await ws.finished()
    assert received == [{"type": "websocket.receive", "text": "after the decision"}]
    await guard.shutdown()


async def test_app_sends_after_its_own_close_while_a_token_is_pending_go_to_the_server() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
        await send({"type": "websocket.send", "text": "late"})

    guard = Guard(
        rules=[rules.JWTAuth("s" * 32, algorithms=["HS256"], token=rules.from_first_message(5.0))]
    )
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))
    await ws.connect()
    await ws.finished()
    # The server, not ws_guard, decides about a send after the app's close.
    assert ws.sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 4000, "reason": "bye"},
        {"type": "websocket.send", "text": "late"},
    ]
    assert guard.metrics.snapshot().dropped_sends == 0
    await guard.shutdown()


def _refused() -> ClientDisconnected:
    return ClientDisconnected("send to a gone client")


def _wrapped() -> WebSocketDisconnect:
    try:
        raise _refused()
    except ClientDisconnected as refused:
        try:
            raise WebSocketDisconnect("the client left") from refused
        except WebSocketDisconnect as error:
            return error


@pytest.mark.parametrize(
    ("members", "client_left"),
    [
        (lambda: [_refused(), _wrapped()], True),
        (lambda: [_refused(), ExceptionGroup("inner", [_wrapped()])], True),
        (lambda: [_refused(), RuntimeError("bug")], False),
        (lambda: [_wrapped(), ExceptionGroup("inner", [ValueError("bug")])], False),
    ],
    ids=["all-refused", "nested-refused", "one-bug", "nested-bug"],
)
async def test_an_exception_group_of_refused_sends_is_the_client_leaving(
    members: Any, client_left: bool
) -> None:
    # An app that sends from several tasks of a task group raises a group of
    # the server's refusals when the client leaves: still the client leaving.
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise ExceptionGroup("tasks", members())

    guarded_app, _, events = guarded(app)
    ws = ScriptedWebSocket(guarded_app)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    if not client_left:
        await ws.expect("websocket.close", code=1011, reason="internal_error")
    with pytest.raises(ExceptionGroup):
        await ws.finished()
    expected = (1006, "client", None) if client_left else (1011, "app", "internal_error")
    assert [(e.code, e.initiator, e.rule) for e in events] == [expected]
