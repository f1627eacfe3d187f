"""Client address resolution behind trusted proxies, and the key functions."""

from __future__ import annotations

import pytest

from apps import Recorder
from ws_guard import Guard, WSGuardMiddleware, connection_info, rules
from ws_guard._keys import parse_trusted_proxies, resolve_client_ip
from ws_guard.testing import ScriptedWebSocket

TRUSTED = parse_trusted_proxies(["10.0.0.0/8", "::1", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # IPv4 proxy in front of an IPv4 client
        ("10.0.0.1", "203.0.113.5", "203.0.113.5"),
        ("10.0.0.1", " 203.0.113.5 ", "203.0.113.5"),
        # chain: right-most hop that is not a trusted proxy wins; left of it is forgeable
        ("10.0.0.1", "1.1.1.1, 203.0.113.5, 10.0.0.2", "203.0.113.5"),
        ("10.0.0.1", "spoofed, 203.0.113.5", "203.0.113.5"),
        # every hop trusted: the left-most (furthest) one is the best we know
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),
        # garbage from a trusted proxy: the last address we can vouch for
        ("10.0.0.1", "203.0.113.5, garbage", "10.0.0.1"),
        ("10.0.0.1", "203.0.113.5, garbage, 10.0.0.2", "10.0.0.2"),
        ("10.0.0.1", ", ,", "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
        ("10.0.0.1", None, "10.0.0.1"),
        # hops with ports
        ("10.0.0.1", "203.0.113.5:5555", "203.0.113.5"),
        ("10.0.0.1", "[2001:db8::7]:443", "2001:db8::7"),
        # IPv6 proxy and clients
        ("::1", "2001:db8::1", "2001:db8::1"),
        ("::1", "2001:db8::1, 2001:db8:ffff::2", "2001:db8::1"),
        ("2001:db8:ffff::9", "198.51.100.1", "198.51.100.1"),
        # IPv4-mapped addresses are compared as IPv4
        ("::ffff:10.0.0.1", "203.0.113.5", "203.0.113.5"),
        ("10.0.0.1", "::ffff:203.0.113.9", "203.0.113.9"),
        ("::ffff:198.51.100.7", "203.0.113.5", "198.51.100.7"),
        # untrusted peer: the header is the client's own words, ignored
        ("198.51.100.7", "203.0.113.5", "198.51.100.7"),
        ("2001:db8::99", "203.0.113.5", "2001:db8::99"),
        # no peer / not an IP peer
        (None, "203.0.113.5", "unknown"),
        ("/run/app.sock", "203.0.113.5", "/run/app.sock"),
        # several X-Forwarded-For lines, joined: the proxy's appended line counts
        ("10.0.0.1", "198.51.100.66, 203.0.113.5", "203.0.113.5"),
        ("10.0.0.1", "198.51.100.66, 198.51.100.67, 203.0.113.5, 10.0.0.2", "203.0.113.5"),
    ],
)
def test_resolve_client_ip(peer: str | None, forwarded: str | None, expected: str) -> None:
    assert resolve_client_ip(peer, forwarded, TRUSTED) == expected


def test_forwarded_for_ignored_without_trusted_proxies() -> None:
    assert resolve_client_ip("10.0.0.1", "203.0.113.5", ()) == "10.0.0.1"


def test_proxy_networks_are_not_strict() -> None:
    (net,) = parse_trusted_proxies(["10.1.2.3/8"])
    assert str(net) == "10.0.0.0/8"


async def client_ip_of(guard: Guard, peer: tuple[str, int] | None, xff: bytes | None) -> str:
    app = Recorder()
    headers = [(b"X-Forwarded-For", xff)] if xff is not None else []
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard), client=peer, headers=headers)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.disconnect()
    await ws.finished()
    info = connection_info(app.scopes[0])
    assert info is not None
    return info.client_ip


async def test_connection_client_ip_through_the_middleware() -> None:
    trusted = Guard(trusted_proxies=["127.0.0.1"])
    assert await client_ip_of(trusted, ("127.0.0.1", 1), b"203.0.113.5") == "203.0.113.5"
    assert await client_ip_of(trusted, ("198.51.100.1", 1), b"203.0.113.5") == "198.51.100.1"
    assert await client_ip_of(trusted, None, b"203.0.113.5") == "unknown"
    plain = Guard()
    assert await client_ip_of(plain, ("127.0.0.1", 1), b"203.0.113.5") == "127.0.0.1"


async def test_key_functions() -> None:
    seen: list[tuple[str, str, str | None]] = []

    class Keys(rules.Rule):
        async def admit(self, conn):  # type: ignore[no-untyped-def]
            seen.append((rules.by_connection(conn), rules.by_ip(conn), rules.by_user(conn)))

    guard = Guard(rules=[Keys()])
    await client_ip_of(guard, ("198.51.100.1", 1), None)
    await client_ip_of(guard, ("198.51.100.1", 2), None)
    (id1, ip1, user1), (id2, ip2, user2) = seen
    assert id1 != id2
    assert ip1 == ip2 == "198.51.100.1"
    assert user1 is user2 is None


async def test_connection_request_data() -> None:
    captured = {}

    class Look(rules.Rule):
        async def admit(self, conn):  # type: ignore[no-untyped-def]
            captured.update(
                header=conn.header("x-token"),
                cookie=conn.header("cookie"),
                missing=conn.header("nope"),
                query=conn.query,
                subprotocols=conn.subprotocols,
                path=conn.path,
            )

    guard = Guard(rules=[Look()])
    ws = ScriptedWebSocket(
        WSGuardMiddleware(Recorder(), guard=guard),
        "/ws/room",
        query_string=b"token=a%20b&x=&x=2",
        headers=[
            (b"X-Token", b"first"),
            (b"x-token", b"second"),
            (b"Cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ],
        subprotocols=["chat", "bearer.abc"],
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.disconnect()
    await ws.finished()
    assert captured == {
        "header": "first, second",
        "cookie": "a=1; b=2",
        "missing": None,
        "query": {"token": ["a b"], "x": ["", "2"]},
        "subprotocols": ["chat", "bearer.abc"],
        "path": "/ws/room",
    }
