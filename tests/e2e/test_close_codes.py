"""Close codes as a real client sees them, on every uvicorn WebSocket stack and hypercorn.

One server per implementation serves the whole module; each test mounts its
own freshly built guard on its own path, so counters start at zero. Server
side counters are read on the server's loop and waited for with a bounded
poll, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect

from tests.support.apps import Recorder, crash_after_first_message, echo, return_after_first_message
from tests.support.helpers import Checks, Deny, Lifecycle, SessionLimit
from tests.support.servers import UVICORN_WS, serve
from tests.support.sites import Router, Site, closed_by_server
from ws_guard import Guard, WSGuardMiddleware, connection_info, load, rules

pytestmark = [
    pytest.mark.e2e,
    # uvicorn's legacy "websockets" implementation runs on deprecated websockets APIs.
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler"),
]

SERVERS = (*UVICORN_WS, "hypercorn")
RETRY_HINT = re.compile(r"overloaded; retry-after=[1-9][0-9]*(?:\.[0-9])?")


@pytest.fixture(scope="module", params=SERVERS)
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    router = Router()
    with serve(router, request.param) as server:  # type: ignore[arg-type]
        yield Site(request.param, server, router)


# -- message rules ---------------------------------------------------------------

RULE_CASES = [
    pytest.param(lambda: rules.MaxMessageSize(8), "x" * 9, 1009, "message_too_big", id="size-text"),
    pytest.param(lambda: rules.MaxMessageSize(8), "é" * 5, 1009, "message_too_big", id="size-utf8"),
    pytest.param(
        lambda: rules.MaxMessageSize(8), b"123456789", 1009, "message_too_big", id="size-bytes"
    ),
    pytest.param(
        lambda: rules.MessageTypes(binary=False), b"\x00", 1003, "unsupported_data", id="types"
    ),
    pytest.param(
        lambda: rules.Content(lambda p: "http://" not in p, name="no_links"),
        "see http://x",
        1008,
        "content:no_links",
        id="content",
    ),
    pytest.param(
        lambda: rules.Pattern(r"(?i)drop\s+table"),
        "DROP TABLE",
        1008,
        "content:pattern",
        id="pattern",
    ),
    pytest.param(
        lambda: rules.Json(lambda v: "op" in v, name="op"),
        '{"no": 1}',
        1008,
        "content:op",
        id="json",
    ),
]


@pytest.mark.parametrize(("make_rule", "bad", "code", "reason"), RULE_CASES)
async def test_message_rule_close(
    site: Site, make_rule: Callable[[], rules.Rule], bad: str | bytes, code: int, reason: str
) -> None:
    url, guard = site.mount(echo, rules=[make_rule()])
    async with connect(url) as ws:
        await ws.send('{"op":1}')  # 8 bytes: passes every rule above
        assert await ws.recv() == '{"op":1}'
        if code == 1009:
            await ws.send("é" * 4)  # exactly at the limit: 8 bytes of UTF-8
            assert await ws.recv() == "é" * 4
        await ws.send(bad)
        assert await closed_by_server(ws) == []
    assert (ws.close_code, ws.close_reason) == (code, reason)
    snap = await site.wait_for(guard, lambda s: s.active_connections == 0)
    assert dict(snap.closes_by_code) == {code: 1}
    assert dict(snap.closes_by_initiator) == {"guard": 1}


async def test_shadow_mode_keeps_connection(site: Site) -> None:
    url, guard = site.mount(echo, rules=[rules.MaxMessageSize(2, enforce=False)])
    async with connect(url) as ws:
        await ws.send("too long")
        assert await ws.recv() == "too long"
    snap = await site.wait_for(guard, lambda s: s.active_connections == 0)
    assert dict(snap.shadow_breaches_by_rule) == {"message_too_big": 1}
    assert sum(snap.closes_by_initiator.values()) == 1


async def test_reason_is_cut_to_123_bytes(site: Site) -> None:
    rule = Checks(lambda message: rule.breach(4001, "é" * 100), name="long")
    url, _ = site.mount(echo, rules=[rule])
    async with connect(url) as ws:
        await ws.send("hi")
        await closed_by_server(ws)
    assert (ws.close_code, ws.close_reason) == (4001, "é" * 61)


# -- the app's own ends ------------------------------------------------------------


async def test_app_crash_gives_1011(site: Site) -> None:
    url, guard = site.mount(crash_after_first_message)
    async with connect(url) as ws:
        await ws.send("boom")
        await closed_by_server(ws)
    assert (ws.close_code, ws.close_reason) == (1011, "internal_error")
    snap = await site.wait_for(guard, lambda s: s.active_connections == 0)
    assert dict(snap.closes_by_rule) == {"internal_error": 1}


async def test_app_return_without_close_gives_1000(site: Site) -> None:
    url, guard = site.mount(return_after_first_message)
    async with connect(url) as ws:
        await ws.send("bye")
        await closed_by_server(ws)
    assert (ws.close_code, ws.close_reason) == (1000, "")
    snap = await site.wait_for(guard, lambda s: s.active_connections == 0)
    assert dict(snap.closes_by_initiator) == {"app": 1}


async def test_app_sends_after_guard_close_are_dropped(site: Site) -> None:
    app = Recorder(after_disconnect=({"type": "websocket.send", "text": "late"},))
    url, guard = site.mount(app, rules=[rules.MaxMessageSize(4)])
    async with connect(url) as ws:
        await ws.send("too long")
        assert await closed_by_server(ws) == []
    assert ws.close_code == 1009
    snap = await site.wait_for(guard, lambda s: s.active_connections == 0)
    assert snap.dropped_sends == 1
    assert app.returned  # the late send did not raise into the app
    assert app.received[-1] == {
        "type": "websocket.disconnect",
        "code": 1009,
        "reason": "message_too_big",
    }


async def test_guard_close_from_deadline_wakes_blocked_app(site: Site) -> None:
    app = Recorder()
    url, guard = site.mount(app, rules=[SessionLimit(0.05)])
    async with connect(url) as ws:
        await closed_by_server(ws)  # the client sends nothing; the deadline closes
    assert (ws.close_code, ws.close_reason) == (1008, "session_expired")
    await site.wait_for(guard, lambda s: s.active_connections == 0)
    assert app.received[-1] == {
        "type": "websocket.disconnect",
        "code": 1008,
        "reason": "session_expired",
    }


# -- the client's ends ---------------------------------------------------------------


async def test_client_normal_close(site: Site) -> None:
    url, guard = site.mount(echo)
    async with connect(url) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
    snap = await site.wait_for(guard, lambda s: s.active_connections == 0)
    # hypercorn reports a client's 1000 close frame to the app as 1006 (docs/servers.md).
    expected = 1006 if site.kind == "hypercorn" else 1000
    assert dict(snap.closes_by_code) == {expected: 1}
    assert dict(snap.closes_by_initiator) == {"client": 1}


async def test_client_disconnect_mid_message(site: Site) -> None:
    app = Recorder()
    url, guard = site.mount(app, rules=[rules.MaxMessageSize(1 << 20)])
    ws = await connect(url)
    first_sent = asyncio.Event()

    async def fragments() -> Any:
        yield "first half, "
        first_sent.set()
        await asyncio.Event().wait()  # the second half never comes
        yield "second half"  # pragma: no cover

    sending = asyncio.ensure_future(ws.send(fragments()))
    await first_sent.wait()
    ws.transport.close()  # TCP FIN after the first fragment, no close frame
    snap = await site.wait_for(guard, lambda s: s.active_connections == 0)
    sending.cancel()
    # uvicorn's websockets-sansio and wsproto report a lost TCP connection on an
    # open WebSocket as 1005, the others as 1006 (docs/servers.md).
    expected = 1005 if site.kind in ("websockets-sansio", "wsproto") else 1006
    assert dict(snap.closes_by_code) == {expected: 1}
    assert dict(snap.closes_by_initiator) == {"client": 1}
    assert [m["type"] for m in app.received] == ["websocket.connect", "websocket.disconnect"]


# -- handshake rejection ----------------------------------------------------------------


async def test_overload_is_a_1013_close_after_a_real_accept(site: Site) -> None:
    url, guard = site.mount(echo, load=[load.ConnectionCount(limit=1)])
    async with connect(url) as first:
        async with connect(url) as second:  # the handshake succeeds: no HTTP 403
            await closed_by_server(second)
        assert second.close_code == 1013
        assert RETRY_HINT.fullmatch(second.close_reason or "")
        await first.send("still served")
        assert await first.recv() == "still served"
    snap = await site.wait_for(guard, lambda s: s.active_connections == 0)
    assert (snap.handshakes_admitted, snap.handshakes_rejected) == (1, 1)
    assert snap.closes_by_code[1013] == 1


@pytest.mark.parametrize(
    ("guard_kwargs", "status", "retry_after", "body"),
    [
        pytest.param(
            {"rules": [Deny(1013, "overloaded", 3)]},
            503,
            "3",
            b"overloaded; retry-after=3",
            id="load",
        ),
        pytest.param(
            {"rules": [Deny(1008, "rate_limited", 9.5)]},
            429,
            "10",
            b"rate_limited; retry-after=10",
            id="rate",
        ),
        pytest.param(
            {"rules": [Deny(1008, "token_invalid")]}, 403, None, b"token_invalid", id="auth"
        ),
    ],
)
async def test_http_denial(
    site: Site, guard_kwargs: dict[str, Any], status: int, retry_after: str | None, body: bytes
) -> None:
    app = Recorder()
    url, guard = site.mount(app, reject="http", **guard_kwargs)
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(url):
            pass  # pragma: no cover
    response = info.value.response
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry_after
    assert bytes(response.body or b"") == body
    assert app.calls == 0
    snap = await site.snapshot(guard)
    assert snap.handshakes_rejected == 1


async def test_http_denial_for_the_load_gauge(site: Site) -> None:
    url, _ = site.mount(echo, reject="http", load=[load.ConnectionCount(limit=1)])
    async with connect(url) as first:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(url):
                pass  # pragma: no cover
        assert info.value.response.status_code == 503
        assert re.fullmatch(r"[1-9][0-9]*", info.value.response.headers["Retry-After"])
        await first.send("ok")
        assert await first.recv() == "ok"


# -- lifespan ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["websockets-sansio", "hypercorn"])
def test_lifespan_starts_and_stops_the_guard(kind: str) -> None:
    rule = Lifecycle()
    guard = Guard(rules=[rule])
    with serve(WSGuardMiddleware(echo, guard=guard), kind):
        assert rule.events == ["startup"]  # before any connection
    assert rule.events == ["startup", "shutdown"]


# -- client address behind a trusted proxy ----------------------------------------------------


@pytest.mark.parametrize("kind", ["websockets-sansio", "hypercorn"])
async def test_trusted_proxy_forwarded_for(kind: str) -> None:
    app = Recorder()
    guard = Guard(trusted_proxies=["127.0.0.1"])
    # proxy_headers=False: uvicorn must not rewrite the client itself (hypercorn never does).
    with serve(WSGuardMiddleware(app, guard=guard), kind, proxy_headers=False) as server:
        headers = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
        async with connect(server.url + "/ws", additional_headers=headers) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        info = connection_info(app.scopes[0])
        assert info is not None
        assert info.client_ip == "203.0.113.7"
