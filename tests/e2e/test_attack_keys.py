"""Client-chosen ``by_ip`` keys through the server's own proxy handling, on real uvicorn.

ws_guard believes ``X-Forwarded-For`` only from ``Guard(trusted_proxies=...)``
and then takes the right-most hop it cannot vouch for. uvicorn rewrites
``scope["client"]`` from the same header before any app runs
(``--proxy-headers``, on by default); with ``--forwarded-allow-ips '*'``, a
setting container guides recommend, it takes the *left-most* hop, which the
client wrote. ASGI gives the app no other copy of the TCP peer, so ws_guard
cannot tell this from a correct setting: every forged value is a fresh key.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.apps import echo
from tests.support.rate_helpers import Clock
from tests.support.servers import serve
from ws_guard import Guard, WSGuardMiddleware, rules

pytestmark = [pytest.mark.e2e]

#: The address the proxy saw and appended after the client's forged one.
REAL = "203.0.113.7"
FORGED = [f"198.51.100.{i}" for i in range(1, 5)]
REFUSED = (1008, "connect_rate_limited; retry-after=60")


def app(**guard_options: object) -> WSGuardMiddleware:
    guard = Guard(
        rules=[rules.ConnectRate("2/minute", key=rules.by_ip)],
        clock=Clock(),
        **guard_options,  # type: ignore[arg-type]
    )
    return WSGuardMiddleware(echo, guard=guard)


async def outcomes(url: str) -> list[tuple[int, str] | str]:
    """For each forged hop before the proxy's, ``"admitted"`` or the close received."""
    results: list[tuple[int, str] | str] = []
    for forged in FORGED:
        headers = [("X-Forwarded-For", f"{forged}, {REAL}")]
        async with connect(url + "/ws", additional_headers=headers) as ws:
            try:
                await ws.send("ping")
                answer = await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as exc:
                results.append((exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, ""))
            else:
                results.append("admitted" if answer == "ping" else str(answer))
    return results


async def test_ws_guard_resolving_the_header_keys_the_real_client() -> None:
    """The baseline: uvicorn leaves the peer alone, ws_guard trusts the loopback proxy."""
    with serve(app(trusted_proxies=["127.0.0.1"]), proxy_headers=False) as srv:
        assert await outcomes(srv.url) == ["admitted", "admitted", REFUSED, REFUSED]


@pytest.mark.xfail(
    strict=True,
    reason="uvicorn --forwarded-allow-ips '*' puts the client's left-most hop in "
    "scope['client']; ASGI carries no other copy of the peer for ws_guard to check",
)
async def test_uvicorn_trusting_every_address_lets_the_client_choose_its_key() -> None:
    with serve(app(), forwarded_allow_ips="*") as srv:
        assert await outcomes(srv.url) == ["admitted", "admitted", REFUSED, REFUSED]
