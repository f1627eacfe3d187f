"""Property test of the per-connection state machine.

Hypothesis writes scripts of client messages, app actions and guard events;
a fake ASGI server runs them against a guarded scripted app and checks the
invariants ws_guard promises, whatever the interleaving:

* the server sees a valid ASGI WebSocket sequence (only accept, close or a
  denial before accept; nothing after a close; never two closes);
* every code sent may be sent and every reason fits in 123 bytes;
* after any close the app ends, and its receive() gave websocket.disconnect;
* active connections and scheduler entries return to zero;
* every client message that passes the rules reaches the app once, in order.

``HYPOTHESIS_PROFILE=nightly`` runs 10 000 cases; the default run a few hundred.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.backends import BACKENDS, joined
from ws_guard import Close, Guard, WSGuardMiddleware, rules
from ws_guard._core.connection import Connection
from ws_guard._core.tasks import spawn
from ws_guard.codes import is_sendable_code
from ws_guard.testing import _Queue
from ws_guard.types import Message, Receive, Scope, Send

settings.register_profile(
    "default", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "nightly", max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

MAX_SIZE = 16
FORBIDDEN = "zz"


class ExternalClose(rules.Rule):
    """Lets the script close the connection from outside the message path."""

    def on_open(self, conn: Connection) -> None:
        conn.extra["external"] = True


def _allowed(message: Message) -> bool:
    """What the guard below lets through, computed independently of ws_guard."""
    text = message.get("text")
    if text is None:
        return len(message["bytes"]) <= MAX_SIZE  # binary: size rule only
    return len(text.encode("utf-8", "surrogatepass")) <= MAX_SIZE and FORBIDDEN not in text


client_message = st.one_of(
    st.text(max_size=24).map(lambda t: {"type": "websocket.receive", "text": t}),
    st.binary(max_size=24).map(lambda b: {"type": "websocket.receive", "bytes": b}),
    st.just({"type": "websocket.receive", "text": "x" * (MAX_SIZE + 1)}),
    st.just({"type": "websocket.receive", "text": "{not json"}),
    st.just({"type": "websocket.receive", "text": ""}),
    st.just({"type": "websocket.receive", "text": "a" + FORBIDDEN}),
)
action = st.one_of(
    st.tuples(st.just("client"), client_message),
    st.tuples(st.just("client"), client_message),
    st.tuples(st.just("client_disconnect"), st.sampled_from([1000, 1001, 1005, 1006])),
    st.tuples(st.just("guard_close"), st.sampled_from([1008, 1013, 1012, 4000])),
    st.tuples(st.just("yield"), st.integers(1, 5)),
)
app_step = st.sampled_from(
    ["receive", "receive", "receive", "receive", "send", "close", "raise", "return"]
)


class AppFailure(Exception):
    """The scripted app's own crash, told apart from any error of ws_guard's."""


@dataclass
class Run:
    sent: list[Message] = field(default_factory=list)
    app_received: list[Message] = field(default_factory=list)
    app_error: AppFailure | None = None
    app_raised: bool = False
    client_sent: list[Message] = field(default_factory=list)


async def run_script(
    accept: bool, steps: list[str], script: list[tuple[str, Any]]
) -> tuple[Run, Guard]:
    guard = Guard(
        rules=[
            rules.MaxMessageSize(MAX_SIZE),
            rules.Content(lambda p: not (isinstance(p, str) and FORBIDDEN in p), name="forbidden"),
            ExternalClose(),
        ]
    )
    run = Run()
    incoming = _Queue()
    conns: list[Connection] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        run.app_received.append(message)
        if not accept:
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "websocket.accept"})
        closed = False
        for step in steps:
            if step == "receive":
                message = await receive()
                run.app_received.append(message)
                if message["type"] == "websocket.disconnect":
                    return
            elif step == "send" and not closed:
                await send({"type": "websocket.send", "text": "out"})
            elif step == "close" and not closed:
                await send({"type": "websocket.close", "code": 1000})
                closed = True
            elif step == "raise":
                run.app_raised = True
                raise AppFailure("app failure")
            elif step == "return":
                return
        # A well-behaved app drains until disconnect.
        while True:
            message = await receive()
            run.app_received.append(message)
            if message["type"] == "websocket.disconnect":
                return

    middleware = WSGuardMiddleware(app, guard=guard)

    async def receive() -> Message:
        return await incoming.get()

    async def send(message: Message) -> None:
        run.sent.append(message)

    scope: Scope = {
        "type": "websocket",
        "path": "/ws",
        "client": ("127.0.0.1", 1),
        "headers": [],
        "query_string": b"",
        "subprotocols": [],
        "extensions": {},
    }
    await incoming.put({"type": "websocket.connect"})
    task = spawn(middleware(scope, receive, send))
    for _ in range(3):
        await anyio.sleep(0)
    conns.extend(guard.live_connections)
    disconnected = False
    for kind, value in script:
        if kind == "client" and not disconnected:
            run.client_sent.append(value)
            await incoming.put(dict(value))
        elif kind == "client_disconnect" and not disconnected:
            disconnected = True
            await incoming.put({"type": "websocket.disconnect", "code": value})
        elif kind == "guard_close":
            for conn in list(guard.live_connections):
                conn.close_soon(Close(value, "external", "external"))
        for _ in range(value if kind == "yield" else 2):
            await anyio.sleep(0)
    if not disconnected:
        await incoming.put({"type": "websocket.disconnect", "code": 1000})
    try:
        await joined(task)
    except AppFailure as exc:  # the scripted crash; anything else fails the test
        run.app_error = exc
    return run, guard


def check_server_sequence(sent: list[Message]) -> None:
    state = "connecting"
    for message in sent:
        kind = message["type"]
        assert state != "closed", f"sent {kind} after close: {sent}"
        if state == "connecting":
            assert kind in ("websocket.accept", "websocket.close"), f"{kind} before accept: {sent}"
        if kind == "websocket.accept":
            state = "open"
        elif kind == "websocket.close":
            state = "closed"
            code = message.get("code", 1000)
            assert is_sendable_code(code), f"unsendable code {code}"
            assert len(message.get("reason", "").encode()) <= 123


@pytest.mark.parametrize("backend", BACKENDS)
@given(st.booleans(), st.lists(app_step, max_size=8), st.lists(action, max_size=12))
def test_state_machine_invariants(
    backend: str, accept: bool, steps: list[str], script: list[tuple[str, Any]]
) -> None:
    run, guard = anyio.run(run_script, accept, steps, script, backend=backend)
    check_server_sequence(run.sent)
    # The app's crash reaches the server, as ASGI servers expect; nothing else is raised.
    assert (run.app_error is not None) == run.app_raised

    snap = guard.metrics.snapshot()
    assert snap.active_connections == 0
    assert len(guard.scheduler) == 0
    assert not guard.live_connections

    # The app's view: connect first; nothing after a disconnect.
    assert run.app_received[0]["type"] == "websocket.connect"
    kinds = [m["type"] for m in run.app_received]
    if "websocket.disconnect" in kinds:
        assert kinds.index("websocket.disconnect") == len(kinds) - 1

    # A guard close: the app's last receive (if it read after it) carries the same code.
    guard_closes = [m for m in run.sent if m["type"] == "websocket.close"]
    if snap.closes_by_initiator.get("guard") and kinds[-1] == "websocket.disconnect":
        assert run.app_received[-1]["code"] == guard_closes[-1]["code"]

    # Delivered messages: exactly the allowed client messages, in order, as a prefix.
    delivered = [m for m in run.app_received if m["type"] == "websocket.receive"]
    allowed = [m for m in run.client_sent if _allowed(m)]
    assert delivered == allowed[: len(delivered)]
    # Nothing the rules refuse ever reaches the app.
    assert all(_allowed(m) for m in delivered)
    # An app that read until the disconnect, with no guard close, got everything.
    app_read_to_end = kinds[-1] == "websocket.disconnect"
    if app_read_to_end and not snap.closes_by_initiator.get("guard") and run.app_error is None:
        assert delivered == allowed
    event(f"guard_close={bool(snap.closes_by_initiator.get('guard'))}")
    event(f"app_read_to_end={app_read_to_end}")

    # Every close is counted once.
    assert sum(snap.closes_by_code.values()) == sum(snap.closes_by_initiator.values())
    assert len(guard_closes) <= 1
