"""``admin_app`` against hostile and unusual HTTP, on real uvicorn with a real HTTP client.

The Authorization scheme is case-insensitive (RFC 9110 section 11.1), so a
client that writes ``bearer`` is let in with the right token, and nothing
else is: another scheme, the token alone, in a cookie, or in two
Authorization lines. A WebSocket upgrade gets 403, not uvicorn's 500.
"""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.support.servers import serve
from ws_guard import Guard, WSGuardMiddleware, admin_app

pytestmark = [pytest.mark.e2e]

TOKEN = "0123456789abcdefghijklmnopqrstuvwxyz-_"


def mounted(guard: Guard) -> Starlette:
    return Starlette(
        routes=[Mount("/admin", admin_app(guard, token=TOKEN))],
        middleware=[Middleware(WSGuardMiddleware, guard=guard)],
    )


async def test_the_scheme_is_case_insensitive_and_nothing_else_gets_in() -> None:
    guard = Guard(paths=["/ws"])
    with serve(mounted(guard)) as server:
        url = server.http_url + "/admin/bans"
        async with httpx.AsyncClient(timeout=5) as http:

            async def status(headers: list[tuple[str, str]]) -> int:
                return (await http.get(url, headers=headers)).status_code

            accepted = [
                await status([("Authorization", f"{scheme} {TOKEN}")])
                for scheme in ("Bearer", "bearer", "BEARER", "bEaReR")
            ]
            assert accepted == [200, 200, 200, 200]
            assert await status([("Authorization", f"Bearer   {TOKEN}")]) == 200
            refused = [
                await status([("Authorization", TOKEN)]),
                await status([("Authorization", f"Basic {TOKEN}")]),
                await status([("Authorization", f"Bearer{TOKEN}")]),
                await status([("Authorization", f"Bearer {TOKEN[:-1]}")]),
                await status([("Authorization", f"Bearer {TOKEN}x")]),
                await status([("Authorization", "bearer"), ("Authorization", TOKEN)]),
                await status([("Authorization", f"Bearer {TOKEN}")] * 2),
                await status([("Cookie", f"token={TOKEN}")]),
            ]
            assert refused == [401] * 8


async def test_a_websocket_upgrade_is_refused_with_403_not_a_server_error() -> None:
    """uvicorn answers 500 (and logs at ERROR) for an app that ignores a handshake."""
    guard = Guard()
    await guard.startup()
    try:
        with serve(admin_app(guard, token=TOKEN)) as server:
            for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(f"{server.url}/connections", additional_headers=headers):
                        pass
                assert refused.value.response.status_code == 403
    finally:
        await guard.shutdown()


def percent_encoded(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


@pytest.mark.parametrize(
    "query",
    [
        f"x={percent_encoded(TOKEN)}",
        f"{percent_encoded(TOKEN)}=1",
        f"a=1&{percent_encoded(TOKEN)}",
        f"Access_Token=x&b={TOKEN}",
    ],
    ids=["encoded value", "encoded name", "encoded bare name", "mixed case name"],
)
async def test_the_token_anywhere_in_the_query_is_refused(query: str) -> None:
    guard = Guard(paths=["/ws"])
    with serve(mounted(guard)) as server:
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(
                f"{server.http_url}/admin/bans?{query}",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
    assert response.status_code == 400
    assert response.json() == {"error": "credentials are not accepted in the query string"}
