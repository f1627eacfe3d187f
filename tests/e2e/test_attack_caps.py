"""Connection caps against a client that picks where its token goes, on real uvicorn.

``MaxConnectionsPerKey(key=rules.by_user)`` takes its slot at the handshake,
when the subject is known only for handshake token sources. A ``JWTAuth``
that also accepted ``from_first_message`` let the client choose: the same
user, with the same token, sent in the first message instead of the query,
was never counted, and held as many sockets as it liked past the cap. Such a
guard is now refused at construction; handshake tokens keep the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import SECRET, mint
from tests.support.rate_helpers import read_until_closed
from tests.support.servers import serve
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules

pytestmark = [pytest.mark.e2e]

CAP = 2


def capped_app() -> tuple[Guard, WSGuardMiddleware]:
    guard = Guard(
        rules=[
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=[rules.from_query("token")]),
            rules.MaxConnectionsPerKey(CAP, key=rules.by_user),
        ]
    )
    return guard, WSGuardMiddleware(whoami, guard=guard)


@contextlib.asynccontextmanager
async def in_query(url: str, token: str) -> AsyncIterator[ClientConnection]:
    """An admitted connection whose token was in the query, held open."""
    async with connect(f"{url}/ws?token={token}") as ws:
        await ws.send("hi")
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["sub"] == "alice"
        assert await ws.recv() == "hi"
        yield ws


async def first_answer(ws: ClientConnection) -> tuple[str, int, str] | tuple[str, str]:
    """``("close", code, reason)``, or ``("served", text)`` when the app answered."""
    try:
        text = await asyncio.wait_for(ws.recv(), 5)
    except ConnectionClosed as exc:
        if exc.rcvd is None:
            return ("close", 1006, "")
        return ("close", exc.rcvd.code, exc.rcvd.reason)
    return ("served", str(text))


async def test_the_cap_holds_for_handshake_tokens() -> None:
    """The baseline: with the token in the query, the third socket is refused."""
    token = mint("alice")
    guard, app = capped_app()
    with serve(app) as srv:
        async with in_query(srv.url, token), in_query(srv.url, token):
            async with connect(f"{srv.url}/ws?token={token}") as ws:
                received, code, reason = await read_until_closed(ws)
            assert (received, code, reason) == ([], 1008, "too_many_connections")
    assert guard.metrics.snapshot().closes_by_rule == {"too_many_connections": 1}


@pytest.mark.parametrize(
    "handshake_rule",
    [
        pytest.param(lambda: rules.MaxConnectionsPerKey(CAP, key=rules.by_user), id="cap"),
        pytest.param(
            lambda: rules.MaxConnectionsPerKey(1, key=rules.by_user, name="one_each"), id="named"
        ),
    ],
)
@pytest.mark.parametrize(
    "sources",
    [
        pytest.param(lambda: [rules.from_query("token"), rules.from_first_message(5)], id="both"),
        pytest.param(lambda: [rules.from_first_message(5)], id="first-message"),
    ],
)
def test_a_user_keyed_handshake_rule_with_first_message_tokens_is_refused(
    handshake_rule: Callable[[], rules.Rule], sources: Callable[[], list[Any]]
) -> None:
    auth = rules.JWTAuth(SECRET, algorithms=["HS256"], token=sources())
    with pytest.raises(ConfigurationError) as refused:
        Guard(rules=[auth, handshake_rule()])
    message = str(refused.value)
    assert "keys by user at the handshake" in message
    assert "from the first message" in message
    assert "rules.by_ip" in message


def test_first_message_tokens_with_handshake_rules_keyed_by_ip_are_accepted() -> None:
    auth = rules.JWTAuth(SECRET, algorithms=["HS256"], token=[rules.from_first_message(5)])
    Guard(rules=[auth, rules.MaxConnectionsPerKey(CAP), rules.ConnectRate("5/minute")])
    # MessageRate keys each message, so a user known only after the first one counts.
    Guard(rules=[auth, rules.MessageRate("5/second", key=rules.by_user)])
