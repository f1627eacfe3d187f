"""``ws_guard.client.connect``: a header token replaces the caller's own, and the iterator's edges.

The caller may pass ``additional_headers`` that already hold an
``Authorization`` line (a stale token, a copy from an HTTP client). A second
line would make the server read one of two credentials (RFC 9110 section
5.3 lets a recipient join or pick), so the provider's token replaces it.
Real uvicorn, real ``websockets`` client.
"""

from __future__ import annotations

import contextlib

import pytest
from websockets.datastructures import Headers

from tests.support.apps import echo
from tests.support.client_rules import TestToken
from tests.support.servers import serve
from ws_guard import Guard, WSGuardMiddleware
from ws_guard.client import connect

URL = "ws://127.0.0.1:9/ws"  # never dialled


@pytest.mark.e2e
@pytest.mark.parametrize(
    "extra",
    [
        {"Authorization": "Bearer stale-0", "X-Trace": "7"},
        Headers([("authorization", "Bearer stale-0"), ("X-Trace", "7")]),
    ],
)
async def test_the_provider_token_replaces_an_authorization_header_already_given(
    extra: object,
) -> None:
    rule = TestToken("header")
    guard = Guard(rules=[rule])
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        async with contextlib.aclosing(
            connect(
                server.url + "/ws",
                lambda: "good-1",
                token_source="header",
                additional_headers=extra,
            )
        ) as connections:
            async for ws in connections:
                await ws.send("ping")
                assert await ws.recv() == "ping"
                assert ws.request is not None
                assert ws.request.headers.get_all("Authorization") == ["Bearer good-1"]
                assert ws.request.headers["X-Trace"] == "7"
                break
    assert rule.seen == ["good-1"]  # the stale token never reached the server
    assert guard.metrics.snapshot().handshakes_admitted == 1


def test_repr_names_the_url_and_the_token_source_only() -> None:
    assert repr(connect(URL, lambda: "secret-token", token_source="header")) == (
        "Reconnecting(url='ws://127.0.0.1:9/ws', token_source='header')"
    )


async def test_aclose_before_the_first_connection_dials_nothing() -> None:
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        return "t"

    connections = connect(URL, provider)
    await connections.aclose()
    assert calls == []
    assert connections.last_decision is None
