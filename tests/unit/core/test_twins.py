"""Private-range twins: the mapping, the refusal they answer, and what is never twinned.

The real refusing server, daphne, runs in tests/e2e/test_server_matrix.py;
here a send that refuses the way autobahn does (a bare ``Exception`` naming
the code, raised before anything is sent) checks the variants daphne does
not produce: a second close on the same connection, a refusal of the twin
itself, and errors that only look alike.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.apps import Recorder, crash_after_first_message
from tests.support.helpers import RawServer, websocket_scope
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.twins import TWINNED_CODES, refuses_close_code, rfc_code, twin_code
from ws_guard.types import Message


def autobahn_refusal(code: int) -> Exception:
    """What autobahn 26.x ``sendClose`` raises for a code outside 1000 and 3000-4999."""
    return Exception(f"invalid close code {code} (must be 1000 or from [3000, 4999])")


class RefusingServer(RawServer):
    """Refuses close codes the way daphne does; *refuse_twins* refuses 4000-4999 too."""

    def __init__(self, app: Any, *, refuse_twins: bool = False) -> None:
        super().__init__(app, websocket_scope())
        self.refuse_twins = refuse_twins
        self.refused: list[int] = []

    async def send(self, message: Message) -> None:
        code = message.get("code")
        if message["type"] == "websocket.close" and isinstance(code, int):
            allowed = code == 1000 or (3000 <= code <= 4999 and not self.refuse_twins)
            if not allowed:
                self.refused.append(code)
                raise autobahn_refusal(code)
        await super().send(message)


def test_twin_is_code_plus_3000_for_every_rfc_code_above_1000() -> None:
    assert sorted(TWINNED_CODES) == [1001, 1002, 1003, *range(1007, 1015)]
    assert {code: twin_code(code) for code in (1001, 1003, 1008, 1009, 1011, 1012, 1013)} == {
        1001: 4001,
        1003: 4003,
        1008: 4008,
        1009: 4009,
        1011: 4011,
        1012: 4012,
        1013: 4013,
    }
    for code in TWINNED_CODES:
        assert rfc_code(twin_code(code)) == code


@pytest.mark.parametrize("code", [1000, 1004, 1005, 1006, 1015, 3000, 4000, 4999])
def test_codes_without_a_twin_stay(code: int) -> None:
    assert twin_code(code) == code


@pytest.mark.parametrize("code", [1000, 4000, 4004, 4005, 4006, 4015, 4999, 3008, 1008])
def test_only_twins_map_back(code: int) -> None:
    assert rfc_code(code) == code


def test_refusal_is_recognised_only_as_autobahn_words_it() -> None:
    class Subclass(Exception):
        pass

    assert refuses_close_code(autobahn_refusal(1009), 1009)
    assert not refuses_close_code(autobahn_refusal(1009), 1008)  # another code's refusal
    assert not refuses_close_code(autobahn_refusal(10090), 1009)  # a prefix is not the code
    assert not refuses_close_code(autobahn_refusal(1005), 1005)  # no twin for it
    assert not refuses_close_code(Subclass(str(autobahn_refusal(1009))), 1009)
    assert not refuses_close_code(RuntimeError(str(autobahn_refusal(1009))), 1009)
    assert not refuses_close_code(Exception("boom"), 1009)
    assert not refuses_close_code(autobahn_refusal(1009), "1009")


async def test_guard_close_goes_out_as_twin_and_counts_the_rfc_code() -> None:
    app = Recorder()
    guard = Guard(rules=[rules.MaxMessageSize(4)])
    server = RefusingServer(WSGuardMiddleware(app, guard=guard))
    await server.run(
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "too long"},
    )
    assert server.refused == [1009]
    assert server.sent == [
        {"type": "websocket.accept"},
        {"type": "websocket.close", "code": 4009, "reason": "message_too_big"},
    ]
    # The app and the metrics see the RFC code, on every server alike.
    assert app.received[-1] == {
        "type": "websocket.disconnect",
        "code": 1009,
        "reason": "message_too_big",
    }
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_code) == {1009: 1}
    assert dict(snap.closes_by_initiator) == {"guard": 1}


async def test_app_crash_goes_out_as_4011() -> None:
    guard = Guard()
    server = RefusingServer(WSGuardMiddleware(crash_after_first_message, guard=guard))
    with pytest.raises(RuntimeError, match="handler bug"):  # still reaches the server
        await server.run({"type": "websocket.connect"}, {"type": "websocket.receive", "text": "x"})
    assert server.sent[-1] == {"type": "websocket.close", "code": 4011, "reason": "internal_error"}
    assert dict(guard.metrics.snapshot().closes_by_code) == {1011: 1}


async def test_app_close_goes_out_as_twin_and_counts_the_app_code() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1008, "reason": "mine"})

    guard = Guard()
    server = RefusingServer(WSGuardMiddleware(app, guard=guard))
    await server.run({"type": "websocket.connect"})
    assert server.sent[-1] == {"type": "websocket.close", "code": 4008, "reason": "mine"}
    assert dict(guard.metrics.snapshot().closes_by_code) == {1008: 1}


async def test_a_server_that_refuses_the_twin_too_raises_its_error() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1008, "reason": "mine"})

    server = RefusingServer(WSGuardMiddleware(app, guard=Guard()), refuse_twins=True)
    with pytest.raises(Exception, match="invalid close code 4008"):
        await server.run({"type": "websocket.connect"})
    assert server.refused == [1008, 4008]  # one retry, never a loop


async def test_other_errors_from_a_close_propagate_untwinned() -> None:
    class Broken(RawServer):
        async def send(self, message: Message) -> None:
            if message["type"] == "websocket.close":
                raise ValueError("server bug")
            await super().send(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1008, "reason": "mine"})

    server = Broken(WSGuardMiddleware(app, guard=Guard()), websocket_scope())
    with pytest.raises(ValueError, match="server bug"):
        await server.run({"type": "websocket.connect"})
    assert server.sent == [{"type": "websocket.accept"}]
