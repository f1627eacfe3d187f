"""``Connection.client_ip``, parsed on first read, against every ``scope["client"]``.

ASGI says ``client`` is ``[host, port]`` with a str host, or None. Anything
else (a bytes or int host, a bare string) is no address, like a Unix socket:
never an exception where the address is first read (a rule, a log line,
``guard.connections()``), and a ``by_ip`` limit refuses it with 1008
``client_unknown`` as it refuses any client without an address.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.apps import echo
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Receive, Scope, Send

NOT_AN_ADDRESS = [
    None,
    ("/run/app.sock", None),
    ("", 0),
    (None, 5),
    (123, 4),
    (b"203.0.113.5", 4000),
    "203.0.113.5",
    [],
    7,
]


async def listed(guard: Guard, client: Any) -> list[tuple[str, str]]:
    """Open one connection from *client*; the (client_ip, key) pairs the guard lists."""
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), "/ws", client=client)
    await ws.connect()
    await ws.expect("websocket.accept")
    found = [(snap.client_ip, snap.key.split(":")[0]) for snap in guard.connections()]
    await ws.disconnect()
    await ws.finished()
    return found


@pytest.mark.parametrize("client", NOT_AN_ADDRESS, ids=repr)
@pytest.mark.parametrize("proxies", [(), ("10.0.0.0/8",)], ids=["direct", "trusted_proxies"])
async def test_a_client_that_is_not_an_address_is_unknown_without_raising(
    client: Any, proxies: tuple[str, ...]
) -> None:
    guard = Guard(trusted_proxies=list(proxies))
    assert await listed(guard, client) == [("unknown", "unknown")]
    assert guard.metrics.snapshot().closes_by_code == {1000: 1}


@pytest.mark.parametrize("client", NOT_AN_ADDRESS, ids=repr)
async def test_a_by_ip_limit_refuses_a_client_that_is_not_an_address(client: Any) -> None:
    guard = Guard(rules=[rules.ConnectRate("10/minute", key=rules.by_ip)])
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), "/ws", client=client)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=1008, reason="client_unknown")
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"client_unknown": 1}


@pytest.mark.parametrize(
    ("client", "ip", "key"),
    [
        (("203.0.113.5", 4000), "203.0.113.5", "203.0.113.5"),
        (["203.0.113.5", 4000], "203.0.113.5", "203.0.113.5"),  # a list, as some servers give
        (("203.0.113.5", 4000, "extra"), "203.0.113.5", "203.0.113.5"),
        (("::ffff:203.0.113.5", 4000), "203.0.113.5", "203.0.113.5"),
        (("2001:db8::1", 4000), "2001:db8::1", "2001:db8::/64"),
        (("fe80::1%eth0", 4000), "fe80::1%eth0", "fe80::/64"),
        (("[2001:db8::1]", 4000), "2001:db8::1", "2001:db8::/64"),
    ],
)
async def test_addresses_read_as_before(client: Any, ip: str, key: str) -> None:
    guard = Guard()
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), "/ws", client=client)
    await ws.connect()
    await ws.expect("websocket.accept")
    assert [(s.client_ip, s.key) for s in guard.connections()] == [(ip, key)]
    await ws.disconnect()
    await ws.finished()


async def test_an_app_that_rewrites_the_scope_does_not_change_the_address() -> None:
    """The address is the handshake's, even when first read after the app changed the scope."""
    guard = Guard()

    async def rewriting(scope: Scope, receive: Receive, send: Send) -> None:
        scope["client"] = ("198.51.100.66", 1)
        scope["headers"] = [(b"x-forwarded-for", b"198.51.100.77")]
        await echo(scope, receive, send)

    ws = ScriptedWebSocket(
        WSGuardMiddleware(rewriting, guard=guard), "/ws", client=("203.0.113.5", 4000)
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    assert [s.client_ip for s in guard.connections()] == ["203.0.113.5"]
    assert await guard.disconnect(key="198.51.100.66") == 0
    assert await guard.disconnect(key="203.0.113.5") == 1
    await ws.expect("websocket.close", code=1008, reason="disconnected")
    await ws.disconnect()
    await ws.finished()
