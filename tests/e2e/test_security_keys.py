"""Network identity on real uvicorn: repeated header lines and IPv6 prefixes.

A proxy that appends its own ``X-Forwarded-For`` line (HAProxy ``option
forwardfor``) after a line the client wrote must not let the client choose
its key; credentials sent twice must not let the client choose which one
counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection, connect, unix_connect

from tests.support.apps import echo
from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import SECRET, mint
from tests.support.rate_helpers import Clock, read_until_closed
from tests.support.servers import ServerThread, UvicornThread, serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.types import ASGIApp

pytestmark = [pytest.mark.e2e]

Headers = Sequence[tuple[str, str]]
#: The address the proxy saw and appended; every forged line comes before it.
REAL = "203.0.113.7"
VICTIM = "203.0.113.9"
FORGED = [VICTIM] + [f"198.51.100.{i}" for i in range(1, 8)]


def lines(*values: str) -> list[tuple[str, str]]:
    """One ``X-Forwarded-For`` field line per value, in order."""
    return [("X-Forwarded-For", value) for value in values]


async def admitted(url: str, headers: Headers = ()) -> None:
    async with connect(url, additional_headers=headers) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "ping"


async def rejected(url: str, headers: Headers = ()) -> tuple[int, str]:
    """Connect, expect the accept-then-close of a refused handshake; its code and reason."""
    async with connect(url, additional_headers=headers) as ws:
        received, code, reason = await read_until_closed(ws)
    assert received == []
    return code, reason


@contextlib.asynccontextmanager
async def held(url: str, headers: Headers) -> AsyncIterator[ClientConnection]:
    """An admitted connection kept open until the block ends."""
    async with connect(url, additional_headers=headers) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "ping"
        yield ws


def proxied(rule: rules.Rule) -> Guard:
    return Guard(rules=[rule], trusted_proxies=["127.0.0.1"], clock=Clock())


# -- X-Forwarded-For over several field lines ----------------------------------
@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda forged: lines(forged, REAL), id="two-lines"),
        pytest.param(lambda forged: lines(forged, "192.0.2.1", REAL), id="three-lines"),
        pytest.param(lambda forged: lines(f"192.0.2.1, {forged}", REAL), id="comma-list-line"),
        # a second, trusted proxy appended a line after the first proxy's
        pytest.param(lambda forged: lines(forged, REAL, "127.0.0.1"), id="trusted-hop-line"),
    ],
)
async def test_forged_lines_before_the_proxy_line_are_one_key_for_connect_rate(
    shape: object,
) -> None:
    guard = proxied(rules.ConnectRate("3/minute"))
    with serve(WSGuardMiddleware(echo, guard=guard), proxy_headers=False) as server:
        url = server.url + "/ws"
        outcomes = []
        for forged in FORGED:
            headers = shape(forged)  # type: ignore[operator]
            if len(outcomes) < 3:
                await admitted(url, headers)
                outcomes.append(None)
            else:
                outcomes.append(await rejected(url, headers))
        # The victim whose address was forged is not locked out.
        await admitted(url, lines(VICTIM))
    assert outcomes == [None] * 3 + [(1008, "connect_rate_limited; retry-after=60")] * 5
    assert guard.metrics.snapshot().closes_by_rule == {"connect_rate_limited": 5}


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda forged: lines(forged, REAL), id="two-lines"),
        pytest.param(lambda forged: lines(forged, forged, REAL), id="three-lines"),
    ],
)
async def test_forged_lines_before_the_proxy_line_are_one_key_for_connection_caps(
    shape: object,
) -> None:
    cap = rules.MaxConnectionsPerKey(2)
    guard = proxied(cap)
    with serve(WSGuardMiddleware(echo, guard=guard), proxy_headers=False) as server:
        url = server.url + "/ws"
        async with held(url, shape(FORGED[0])), held(url, shape(FORGED[1])):  # type: ignore[operator]
            assert cap.count(REAL) == 2
            refusals = [await rejected(url, shape(forged)) for forged in FORGED[2:]]  # type: ignore[operator]
            await admitted(url, lines(VICTIM))
    assert refusals == [(1008, "too_many_connections")] * 6


# -- credentials sent twice ------------------------------------------------------
def auth_guard() -> Guard:
    rule = rules.JWTAuth(
        SECRET,
        algorithms=["HS256"],
        token=[rules.from_query("token"), rules.from_header(), rules.from_cookie("session")],
    )
    # Cookie auth needs an origin rule; this client is a program (no Origin).
    origin = rules.AllowedOrigins(["https://app.example"], allow_missing=True)
    return Guard(rules=[rule, origin])


async def subject(url: str, headers: Headers = ()) -> str:
    async with connect(url, additional_headers=headers) as ws:
        await ws.send("hi")
        who = json.loads(await asyncio.wait_for(ws.recv(), 5))
    sub: str = who["sub"]
    return sub


ALICE = mint("alice")
MALLORY = mint("mallory")


@pytest.mark.parametrize(
    ("url_tail", "headers"),
    [
        # Authorization is a singleton field: two lines are an invalid request
        ("", [("Authorization", f"Bearer {ALICE}"), ("Authorization", f"Bearer {MALLORY}")]),
        ("", [("Authorization", f"Bearer {ALICE}"), ("Authorization", f"Bearer {ALICE}")]),
        ("", [("Authorization", "Bearer forged"), ("Authorization", f"Bearer {ALICE}")]),
        # one cookie name with two different values, on one line or two
        ("", [("Cookie", f"session={MALLORY}"), ("Cookie", f"session={ALICE}")]),
        ("", [("Cookie", f"session={MALLORY}; session={ALICE}")]),
        # one query parameter with two different values
        (f"?token={ALICE}&token={MALLORY}", []),
    ],
    ids=[
        "auth-two",
        "auth-same-twice",
        "auth-forged-first",
        "cookie-lines",
        "cookie-pairs",
        "query",
    ],
)
async def test_a_credential_given_twice_is_invalid(url_tail: str, headers: Headers) -> None:
    guard = auth_guard()
    with serve(WSGuardMiddleware(whoami, guard=guard)) as server:
        assert await rejected(server.url + "/ws" + url_tail, headers) == (1008, "token_invalid")


async def test_cookie_lines_are_joined() -> None:
    guard = auth_guard()
    with serve(WSGuardMiddleware(whoami, guard=guard)) as server:
        url = server.url + "/ws"
        # HTTP/2 proxies may split Cookie into lines (RFC 9113 section 8.2.3)
        assert await subject(url, [("Cookie", "theme=dark"), ("Cookie", f"session={ALICE}")]) == (
            "alice"
        )
        assert await subject(url + f"?token={ALICE}&token={ALICE}") == "alice"


# -- IPv6: one host's /64 is one key -------------------------------------------
def free_port_v6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


class UvicornV6(UvicornThread):
    """uvicorn bound to the IPv6 loopback ``::1``."""

    def __init__(self, app: ASGIApp) -> None:
        ServerThread.__init__(self, free_port_v6())
        self.url = f"ws://[::1]:{self.port}"
        self.http_url = f"http://[::1]:{self.port}"
        self.config = uvicorn.Config(
            app, host="::1", port=self.port, log_level="warning", proxy_headers=False
        )
        self.server = uvicorn.Server(self.config)


@contextlib.contextmanager
def serve_v6(app: ASGIApp) -> Iterator[ServerThread]:
    server = UvicornV6(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()


ONE_64 = [f"2001:db8:1:2:{i:x}:{i * 7:x}:{i * 13:x}:{i * 31:x}" for i in range(1, 9)]


async def test_an_ipv6_peer_is_keyed_by_its_64_on_real_ipv6() -> None:
    cap = rules.MaxConnectionsPerKey(2)
    guard = Guard(rules=[cap])
    with serve_v6(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        async with held(url, ()), held(url, ()):
            assert cap.count("::/64") == 2  # the peer ::1, keyed by its /64
            assert await rejected(url) == (1008, "too_many_connections")


async def test_eight_addresses_of_one_64_are_one_key() -> None:
    cap = rules.MaxConnectionsPerKey(2)
    guard = Guard(rules=[cap], trusted_proxies=["::1"])
    with serve_v6(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        async with held(url, lines(ONE_64[0])), held(url, lines(ONE_64[1])):
            assert cap.count("2001:db8:1:2::/64") == 2
            refusals = [await rejected(url, lines(address)) for address in ONE_64[2:]]
            # Other /64s (the neighbour's, another site's) are other keys.
            await admitted(url, lines("2001:db8:1:3::1"))
            await admitted(url, lines("2001:db8:1:3::1"))
            await admitted(url, lines("2001:db8:2:2::1"))
    assert refusals == [(1008, "too_many_connections")] * 6


async def test_a_128_prefix_keys_each_ipv6_address() -> None:
    cap = rules.MaxConnectionsPerKey(2)
    guard = Guard(rules=[cap], trusted_proxies=["::1"], ipv6_prefix=128)
    with serve_v6(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        async with held(url, lines(ONE_64[0])), held(url, lines(ONE_64[0])):
            assert await rejected(url, lines(ONE_64[0])) == (1008, "too_many_connections")
            await admitted(url, lines(ONE_64[1]))


async def test_ipv4_mapped_addresses_key_as_ipv4() -> None:
    cap = rules.MaxConnectionsPerKey(2)
    guard = Guard(rules=[cap], trusted_proxies=["::1"])
    with serve_v6(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        async with held(url, lines("::ffff:198.51.100.7")), held(url, lines("198.51.100.7")):
            assert cap.count("198.51.100.7") == 2
            assert await rejected(url, lines("::ffff:c633:6407")) == (1008, "too_many_connections")


# -- no client address: a Unix socket --------------------------------------------
class UvicornUnix(UvicornThread):
    """uvicorn on a Unix socket: ``scope["client"]`` is ``None``."""

    def __init__(self, app: ASGIApp, path: str, **config: Any) -> None:
        ServerThread.__init__(self, 0)
        self.path = path
        self.url = "ws://localhost"
        self.config = uvicorn.Config(app, uds=path, log_level="warning", **config)
        self.server = uvicorn.Server(self.config)


@contextlib.contextmanager
def serve_unix(app: ASGIApp, path: Path, **config: Any) -> Iterator[UvicornUnix]:
    server = UvicornUnix(app, str(path), **config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def unix_outcome(server: UvicornUnix, headers: Headers = ()) -> tuple[int, str] | str:
    """The close of a refused handshake, or ``"admitted"`` after an echo."""
    async with unix_connect(server.path, server.url + "/ws", additional_headers=headers) as ws:
        try:
            await ws.send("ping")  # raises if the close came first
            reply = await asyncio.wait_for(ws.recv(), 5)
        except websockets.ConnectionClosed as exc:
            if exc.rcvd is None:
                raise AssertionError("the connection ended without a close frame") from exc
            return exc.rcvd.code, exc.rcvd.reason
    assert reply == "ping"
    return "admitted"


async def test_a_peer_without_an_address_is_refused_not_shared(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard(rules=[rules.MaxConnectionsPerKey(2)], trusted_proxies=["127.0.0.1"])
    with serve_unix(WSGuardMiddleware(echo, guard=guard), tmp_path / "ws.sock") as server:
        outcomes = [await unix_outcome(server) for _ in range(3)]
        # A forwarded address over the socket is nobody's word: still refused.
        outcomes.append(await unix_outcome(server, lines(REAL)))
    assert outcomes == [(1008, "client_unknown")] * 4
    assert guard.metrics.snapshot().closes_by_rule == {"client_unknown": 4}
    warnings = [r for r in caplog.records if "without a client address" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_unix_socket_behind_a_trusted_proxy_header_is_keyed(tmp_path: Path) -> None:
    cap = rules.MaxConnectionsPerKey(1)
    guard = Guard(rules=[cap])
    app = WSGuardMiddleware(echo, guard=guard)
    # uvicorn sets scope["client"] from X-Forwarded-For when told to trust the socket.
    with serve_unix(app, tmp_path / "ws.sock", forwarded_allow_ips="*") as server:
        assert await unix_outcome(server, lines(REAL)) == "admitted"
        assert await unix_outcome(server, lines(VICTIM)) == "admitted"
        assert await unix_outcome(server) == (1008, "client_unknown")
