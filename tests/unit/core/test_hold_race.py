"""A held auth decision survives every interleaving with a cancelled receive.

A first-message token or an in-band refresh whose key is not fetched yet is
consumed and decided later (``Connection.hold``). The app reads with a
receive task it cancels, as ``asyncio.wait_for`` does on a timeout. These
tests drive the event loop turn by turn: the key fetch is real (a real JWKS
endpoint on 127.0.0.1), but its answer is released by the test in a chosen
loop turn, and the app's receive is cancelled in the same turn (before or
after the release) or up to eight turns later. Whatever the ordering, the
decision is applied: an invalid token closes 1008 ``token_invalid`` and the
client's next message never reaches the app; a valid one lets it through
under the verified subject.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.jwks_server import JWKSServer, new_rsa_key
from tests.support.jwt_keys import mint
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.connection import Connection
from ws_guard._core.decisions import CONSUME
from ws_guard._core.fast_path import FusedRun
from ws_guard._core.guard import Guard as GuardType
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Message, Receive, Scope, Send

KEY_A = new_rsa_key()
KEY_B = new_rsa_key()
KEY_C = new_rsa_key()

#: When the receive is cancelled: ("cancel-first", 0) cancels, then releases
#: the key in the same step; ("release-first", k) releases, then cancels k
#: loop turns later (k=0: the same step).
ORDERINGS = [("cancel-first", 0)] + [("release-first", k) for k in range(9)]


class GatedJWKS(rules.JWKS):
    """A real JWKS endpoint whose fetched answer waits for the test's gate once armed."""

    def __init__(self, url: str) -> None:
        super().__init__(url, cooldown=0.0)
        self.gate: asyncio.Future[None] | None = None
        self.at_gate = False

    async def refresh(self, guard: GuardType) -> bool:
        fetched = await super().refresh(guard)
        gate = self.gate
        if gate is not None:
            self.at_gate = True
            await gate
        return fetched


class PassThrough(rules.Rule):
    """A check ahead of auth that passes everything: no compiled lead run."""

    stage = rules.Stage.CONNECT_RATE

    def checker(self, conn: Connection) -> Callable[[Message], None]:
        return lambda message: None


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        server.publish(b=KEY_B)
        yield server


def rs(key: object, kid: str, sub: str, exp_in: float = 3600) -> str:
    return mint(sub, key=key, alg="RS256", headers={"kid": kid}, exp_in=exp_in)


async def cancellable_reader(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes under the verified subject; every receive is a task the test may cancel."""
    events: list[Any] = scope["events"]
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        reader = asyncio.ensure_future(receive())
        scope["reader"] = reader
        await asyncio.wait((reader,))  # returns when the reader ends, cancelled or not
        if reader.cancelled():
            events.append("cancelled")
            continue
        message = reader.result()
        events.append(message)
        if message["type"] == "websocket.disconnect":
            return
        subject = scope["ws_guard"].subject
        await send({"type": "websocket.send", "text": f"{message['text']} as {subject}"})


def at_turn(loop: asyncio.AbstractEventLoop, turns: int, action: Callable[[], object]) -> None:
    """Run *action* now (0) or after *turns* trips through the loop's ready queue."""
    if turns == 0:
        action()
    else:
        loop.call_soon(at_turn, loop, turns - 1, action)


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a real condition (the key fetch runs in a thread), bounded."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition never held")
        await asyncio.sleep(0.001)


async def race(ws: ScriptedWebSocket, jwks: GatedJWKS, order: str, turns: int) -> None:
    """Release the held key fetch and cancel the app's waiting receive in the given order."""
    await until(lambda: jwks.at_gate)
    reader = ws.scope["reader"]
    assert not reader.done()  # the app is waiting on the held decision
    gate = jwks.gate
    assert gate is not None
    loop = asyncio.get_running_loop()
    if order == "cancel-first":
        reader.cancel()
        gate.set_result(None)
    else:
        gate.set_result(None)
        at_turn(loop, turns, reader.cancel)


def setup(jwks_server: JWKSServer, *, fused: bool, token: Any) -> tuple[Guard, GatedJWKS]:
    jwks = GatedJWKS(jwks_server.url)
    rule = rules.JWTAuth(algorithms=["RS256"], jwks_url=jwks, token=token)
    guard = Guard(rules=[rule] if fused else [PassThrough(), rule])
    assert isinstance(guard.plan.lead_run, FusedRun) is fused  # both receive paths are covered
    return guard, jwks


async def open_socket(guard: Guard, **kwargs: Any) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(WSGuardMiddleware(cancellable_reader, guard=guard), **kwargs)
    ws.scope["events"] = []
    await ws.connect()
    await ws.expect("websocket.accept")  # startup fetched key "b"
    return ws


def delivered(ws: ScriptedWebSocket) -> list[Message]:
    return [e for e in ws.scope["events"] if e != "cancelled"]


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
@pytest.mark.parametrize(("order", "turns"), ORDERINGS)
async def test_an_invalid_first_message_token_closes_in_every_ordering(
    jwks_server: JWKSServer, fused: bool, order: str, turns: int
) -> None:
    guard, jwks = setup(jwks_server, fused=fused, token=rules.from_first_message(5))
    ws = await open_socket(guard)
    jwks_server.publish(a=KEY_A, b=KEY_B)
    jwks.gate = asyncio.get_running_loop().create_future()
    await ws.send_text(rs(KEY_C, "a", "mallory"))  # kid "a", signed by another key
    await ws.send_text("later")
    await race(ws, jwks, order, turns)
    await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.finished()
    assert delivered(ws) == [
        {"type": "websocket.disconnect", "code": 1008, "reason": "token_invalid"}
    ]
    assert ws.sent[1:] == [{"type": "websocket.close", "code": 1008, "reason": "token_invalid"}]
    assert guard.metrics.snapshot().closes_by_rule == {"token_invalid": 1}


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
@pytest.mark.parametrize(("order", "turns"), ORDERINGS)
async def test_a_valid_first_message_token_admits_in_every_ordering(
    jwks_server: JWKSServer, fused: bool, order: str, turns: int
) -> None:
    guard, jwks = setup(jwks_server, fused=fused, token=rules.from_first_message(5))
    ws = await open_socket(guard)
    jwks_server.publish(a=KEY_A, b=KEY_B)
    jwks.gate = asyncio.get_running_loop().create_future()
    await ws.send_text(rs(KEY_A, "a", "fm"))
    await ws.send_text("later")
    await race(ws, jwks, order, turns)
    await ws.expect("websocket.send", text="later as fm")
    await ws.disconnect()
    await ws.finished()
    assert delivered(ws) == [
        {"type": "websocket.receive", "text": "later"},
        {"type": "websocket.disconnect", "code": 1000, "reason": ""},
    ]


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
@pytest.mark.parametrize(("order", "turns"), ORDERINGS)
async def test_a_refresh_to_another_subject_closes_in_every_ordering(
    jwks_server: JWKSServer, fused: bool, order: str, turns: int
) -> None:
    guard, jwks = setup(jwks_server, fused=fused, token=rules.from_header())
    ws = await open_socket(
        guard, headers=[(b"authorization", f"Bearer {rs(KEY_B, 'b', 'alice')}".encode())]
    )
    jwks_server.publish(b=KEY_B, c=KEY_C)
    jwks.gate = asyncio.get_running_loop().create_future()
    await ws.send_text(json.dumps({"type": "auth.refresh", "token": rs(KEY_C, "c", "eve")}))
    await ws.send_text("later")
    await race(ws, jwks, order, turns)
    await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.finished()
    assert delivered(ws) == [
        {"type": "websocket.disconnect", "code": 1008, "reason": "token_invalid"}
    ]
    assert ws.scope["ws_guard"].subject == "alice"
    assert guard.metrics.snapshot().closes_by_rule == {"token_invalid": 1}


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
@pytest.mark.parametrize(("order", "turns"), ORDERINGS)
async def test_a_valid_refresh_applies_in_every_ordering(
    jwks_server: JWKSServer, fused: bool, order: str, turns: int
) -> None:
    guard, jwks = setup(jwks_server, fused=fused, token=rules.from_header())
    ws = await open_socket(
        guard, headers=[(b"authorization", f"Bearer {rs(KEY_B, 'b', 'alice')}".encode())]
    )
    jwks_server.publish(b=KEY_B, c=KEY_C)
    jwks.gate = asyncio.get_running_loop().create_future()
    refresh = rs(KEY_C, "c", "alice", exp_in=7200)  # a refresh must move exp on
    await ws.send_text(json.dumps({"type": "auth.refresh", "token": refresh}))
    await ws.send_text("later")
    await race(ws, jwks, order, turns)
    await ws.expect("websocket.send", text="later as alice")
    await ws.disconnect()
    await ws.finished()
    assert delivered(ws) == [
        {"type": "websocket.receive", "text": "later"},
        {"type": "websocket.disconnect", "code": 1000, "reason": ""},
    ]
    assert guard.metrics.snapshot().closes_by_rule == {}


async def test_a_hold_that_raises_closes_1011_and_lets_nothing_through() -> None:
    """A bug in the deciding code fails closed: 1011, logged, the next message withheld."""

    async def broken() -> None:
        raise RuntimeError("bug while deciding")

    class HoldsFirst(rules.Rule):
        def checker(self, conn: Connection) -> Callable[[Message], Any]:
            def check(message: Message) -> Any:
                if message.get("text") == "decide":
                    conn.hold(broken())
                    return CONSUME
                return None

            return check

    guard = Guard(rules=[HoldsFirst()])
    ws = ScriptedWebSocket(WSGuardMiddleware(cancellable_reader, guard=guard))
    ws.scope["events"] = []
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("decide")
    await ws.send_text("later")
    await ws.expect("websocket.close", code=1011, reason="internal_error")
    await ws.finished()
    assert delivered(ws) == [
        {"type": "websocket.disconnect", "code": 1011, "reason": "internal_error"}
    ]
