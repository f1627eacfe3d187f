"""Client address resolution behind trusted proxies, and the key functions."""

from __future__ import annotations

import re

import pytest

from tests.support.apps import Recorder
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, connection_info, rules
from ws_guard.rules.keys import ip_key, parse_trusted_proxies, resolve_client_ip
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
        # no peer / not an IP peer: unknown, and the header is nobody's word
        (None, "203.0.113.5", "unknown"),
        ("/run/app.sock", "203.0.113.5", "unknown"),
        ("", None, "unknown"),
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


@pytest.mark.parametrize(
    ("ip", "prefix", "expected"),
    [
        # IPv4 is keyed whole, whatever the IPv6 prefix
        ("203.0.113.5", 64, "203.0.113.5"),
        ("203.0.113.5", 1, "203.0.113.5"),
        # IPv6: the /64 by default, so a host's rotating addresses share a key
        ("2001:db8:1:2::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", 64, "2001:db8:1:3::/64"),
        ("2001:db8:1:2::1", 48, "2001:db8:1::/48"),
        ("2001:db8:1:2::1", 56, "2001:db8:1::/56"),
        ("2001:db8:1:2ff::1", 56, "2001:db8:1:200::/56"),
        ("2001:db8::1", 1, "::/1"),
        ("ffff::1", 1, "8000::/1"),
        ("2001:db8::1", 127, "2001:db8::/127"),
        ("2001:db8::1", 128, "2001:db8::1"),
        ("::1", 64, "::/64"),
        ("fe80::1%eth0", 64, "fe80::/64"),
    ],
)
def test_ip_key(ip: str, prefix: int, expected: str) -> None:
    assert ip_key(ip, prefix) == expected


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2:0:0:0:99", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        # IPv4-mapped IPv6 keys as the IPv4 address (a dual-stack socket's view)
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("::ffff:c633:6407", "198.51.100.7"),
        ("198.51.100.7", "198.51.100.7"),
    ],
)
async def test_by_ip_keys_a_peer(peer: str, expected: str) -> None:
    assert await by_ip_of((peer, 1)) == expected


async def test_by_ip_prefix_is_configurable() -> None:
    assert await by_ip_of(("2001:db8::1", 1), ipv6_prefix=128) == "2001:db8::1"
    assert await by_ip_of(("2001:db8:7:8::1", 1), ipv6_prefix=48) == "2001:db8:7::/48"


async def test_by_ip_of_an_unknown_peer_is_never_shared() -> None:
    first = await by_ip_of(None)
    second = await by_ip_of(None)
    assert first.startswith("unknown:")
    assert second.startswith("unknown:")
    assert first != second


@pytest.mark.parametrize("value", [0, 129, -64, 64.0, "64", True, None])
def test_ipv6_prefix_is_validated(value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"ipv6_prefix .* not {re.escape(repr(value))}"):
        Guard(ipv6_prefix=value)  # type: ignore[arg-type]


class KeyOf(rules.Rule):
    """Records ``rules.by_ip`` of each admitted connection."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    async def admit(self, conn):  # type: ignore[no-untyped-def]
        self.keys.append(rules.by_ip(conn))


async def by_ip_of(peer: tuple[str, int] | None, ipv6_prefix: int = 64) -> str:
    """``rules.by_ip`` of one connection from *peer* (a rule that calls it directly)."""
    keys = KeyOf()
    await client_ip_of(Guard(rules=[keys], ipv6_prefix=ipv6_prefix), peer, None)
    return keys.keys[0]


async def test_unknown_peer_is_refused_when_a_rule_keys_by_ip(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = rules.MaxConnectionsPerKey(2)
    guard = Guard(rules=[cap, rules.ConnectRate("100/minute")])
    for _ in range(3):
        ws = ScriptedWebSocket(WSGuardMiddleware(Recorder(), guard=guard), client=None)
        await ws.connect()
        await ws.expect("websocket.accept")
        close = await ws.expect("websocket.close")
        assert (close["code"], close["reason"]) == (1008, "client_unknown")
        await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"client_unknown": 3}
    warnings = [r for r in caplog.records if "without a client address" in r.getMessage()]
    assert len(warnings) == 1
    # A peer with an address is not affected.
    assert await client_ip_of(guard, ("198.51.100.1", 1), None) == "198.51.100.1"


async def test_unknown_peer_is_admitted_without_a_by_ip_rule() -> None:
    def by_path(conn: object) -> str:  # a key that does not read the client address
        return "one"

    guard = Guard(rules=[rules.MaxConnectionsPerKey(2, key=by_path)])
    assert await client_ip_of(guard, None, None) == "unknown"


async def test_unknown_peer_check_follows_shadow_mode() -> None:
    guard = Guard(rules=[rules.ConnectRate("100/minute", enforce=False)])
    assert await client_ip_of(guard, None, None) == "unknown"
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"client_unknown": 1}
