"""The held auth decision survives a cancelled receive, on asyncio and on trio.

The portable twin of test_hold_race.py's key orderings: the app reads each
message inside a cancel scope the test cancels (trio has no tasks to cancel
from outside), the key fetch is real (a JWKS endpoint on 127.0.0.1) and its
answer is released by the test, before or after the cancel, up to eight
scheduler checkpoints apart. Whatever the ordering the decision is applied:
an invalid first-message token closes 1008 ``token_invalid`` and the next
message never reaches the app; a valid one lets it through under the
verified subject.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from tests.support.backends import on_both_backends
from tests.support.jwks_server import JWKSServer, new_rsa_key
from tests.support.jwt_keys import mint
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.guard import Guard as GuardType
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Message, Receive, Scope, Send

KEY_A = new_rsa_key()
KEY_B = new_rsa_key()
KEY_C = new_rsa_key()

#: ("cancel-first", 0): cancel, then release the key in the same step;
#: ("release-first", k): release, then cancel k checkpoints later.
ORDERINGS = [("cancel-first", 0)] + [("release-first", k) for k in (0, 1, 2, 3, 4, 8)]


class GatedJWKS(rules.JWKS):
    """A real JWKS endpoint whose fetched answer waits for the test's gate once armed."""

    def __init__(self, url: str) -> None:
        super().__init__(url, cooldown=0.0)
        self.gate: anyio.Event | None = None
        self.at_gate = False

    async def refresh(self, guard: GuardType) -> bool:
        fetched = await super().refresh(guard)
        gate = self.gate
        if gate is not None:
            self.at_gate = True
            await gate.wait()
        return fetched


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        server.publish(b=KEY_B)
        yield server


async def cancellable_reader(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes under the verified subject; each receive runs in a scope the test may cancel."""
    events: list[Any] = scope["events"]
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message: Message | None = None
        with anyio.CancelScope() as reading:
            scope["reader"] = reading
            message = await receive()
        if message is None:
            events.append("cancelled")
            continue
        events.append(message)
        if message["type"] == "websocket.disconnect":
            return
        subject = scope["ws_guard"].subject
        await send({"type": "websocket.send", "text": f"{message['text']} as {subject}"})


async def race(ws: ScriptedWebSocket, jwks: GatedJWKS, order: str, turns: int) -> None:
    deadline = time.monotonic() + 10.0
    while not jwks.at_gate:  # the fetch runs in a thread: poll the real condition
        if time.monotonic() > deadline:
            raise AssertionError("the key fetch never reached the gate")
        await anyio.sleep(0.001)
    reader: anyio.CancelScope = ws.scope["reader"]
    gate = jwks.gate
    assert gate is not None
    if order == "cancel-first":
        reader.cancel()
        gate.set()
        return
    gate.set()
    for _ in range(turns):
        await anyio.lowlevel.checkpoint()
    reader.cancel()


async def open_socket(jwks_server: JWKSServer) -> tuple[ScriptedWebSocket, Guard, GatedJWKS]:
    jwks = GatedJWKS(jwks_server.url)
    rule = rules.JWTAuth(algorithms=["RS256"], jwks_url=jwks, token=rules.from_first_message(5))
    guard = Guard(rules=[rule])
    ws = ScriptedWebSocket(WSGuardMiddleware(cancellable_reader, guard=guard))
    ws.scope["events"] = []
    await ws.connect()
    await ws.expect("websocket.accept")
    jwks_server.publish(a=KEY_A, b=KEY_B)
    jwks.gate = anyio.Event()
    return ws, guard, jwks


def delivered(ws: ScriptedWebSocket) -> list[Message]:
    return [e for e in ws.scope["events"] if e != "cancelled"]


def rs(key: object, sub: str) -> str:
    return mint(sub, key=key, alg="RS256", headers={"kid": "a"})


@pytest.mark.parametrize(("order", "turns"), ORDERINGS)
@on_both_backends
async def test_an_invalid_token_closes_in_every_ordering(
    anyio_backend: str, jwks_server: JWKSServer, order: str, turns: int
) -> None:
    ws, guard, jwks = await open_socket(jwks_server)
    await ws.send_text(rs(KEY_C, "mallory"))  # kid "a", signed by another key
    await ws.send_text("later")
    await race(ws, jwks, order, turns)
    await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.finished()
    assert delivered(ws) == [
        {"type": "websocket.disconnect", "code": 1008, "reason": "token_invalid"}
    ]
    assert ws.sent[1:] == [{"type": "websocket.close", "code": 1008, "reason": "token_invalid"}]
    assert guard.metrics.snapshot().closes_by_rule == {"token_invalid": 1}
    await guard.shutdown()


@pytest.mark.parametrize(("order", "turns"), ORDERINGS)
@on_both_backends
async def test_a_valid_token_admits_in_every_ordering(
    anyio_backend: str, jwks_server: JWKSServer, order: str, turns: int
) -> None:
    ws, guard, jwks = await open_socket(jwks_server)
    await ws.send_text(rs(KEY_A, "fm"))
    await ws.send_text("later")
    await race(ws, jwks, order, turns)
    await ws.expect("websocket.send", text="later as fm")
    await ws.disconnect()
    await ws.finished()
    assert delivered(ws) == [
        {"type": "websocket.receive", "text": "later"},
        {"type": "websocket.disconnect", "code": 1000, "reason": ""},
    ]
    await guard.shutdown()
