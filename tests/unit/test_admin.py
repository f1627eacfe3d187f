"""``admin_app`` in process: every request over real httpx (ASGI transport), exact answers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.apps import echo
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, admin_app, rules
from ws_guard.testing import ScriptedWebSocket

TOKEN = "a" * 16 + "B" * 16 + "-x"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def guard() -> Guard:
    guard = Guard(
        rules=[
            rules.AutoBan(after=1, within=60, ban=60),
            rules.MaxMessageSize(4),
            rules.Content(lambda m: "bad" not in m, name="no_bad"),
        ]
    )
    await guard.startup()
    return guard


@pytest.fixture
async def http(guard: Guard) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=admin_app(guard, token=TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        yield client
    await guard.shutdown()


async def opened(guard: Guard, ip: str) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), "/ws", client=(ip, 4000))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"X-Token": TOKEN},
    ],
    ids=["none", "wrong", "longer", "other scheme", "no scheme", "other header"],
)
async def test_every_route_refuses_without_the_token(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in (("GET", "/connections"), ("POST", "/disconnect"), ("GET", "/nope")):
        response = await http.request(method, path, headers=headers, json={"subject": "a"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="ws_guard"'
        assert response.json() == {"error": "a valid Authorization: Bearer token is required"}


@pytest.mark.parametrize(
    "query",
    [f"token={TOKEN}", f"access_token={TOKEN}", "token=x", f"x={TOKEN}", "AUTH=1"],
)
async def test_a_credential_in_the_query_string_is_refused_even_with_the_header(
    http: httpx.AsyncClient, query: str
) -> None:
    response = await http.get(f"/connections?{query}", headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {"error": "credentials are not accepted in the query string"}


async def test_list_disconnect_and_unban_over_http(guard: Guard, http: httpx.AsyncClient) -> None:
    a = await opened(guard, "203.0.113.5")
    b = await opened(guard, "198.51.100.1")
    response = await http.get("/connections", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    listed = response.json()["connections"]
    assert [(c["client_ip"], c["path"], c["state"]) for c in listed] == [
        ("203.0.113.5", "/ws", "open"),
        ("198.51.100.1", "/ws", "open"),
    ]
    assert set(listed[0]) == {
        *("id", "client_ip", "key", "subject", "path", "opened_at", "state"),
        *("messages_in", "messages_out"),
    }
    assert (listed[0]["messages_in"], listed[0]["messages_out"]) == (None, None)  # not counted
    response = await http.post(
        "/disconnect", headers=AUTH, json={"key": "203.0.113.5", "code": 4000, "reason": "bye"}
    )
    assert (response.status_code, response.json()) == (200, {"closed": 1})
    await a.expect("websocket.close", code=4000, reason="bye")
    # b breaks a rule: AutoBan(after=1) bans its address at once.
    await b.send_text("bad")
    await b.expect("websocket.close", code=1008, reason="content:no_bad")
    bans = (await http.get("/bans", headers=AUTH)).json()["bans"]
    assert [(ban["key"], ban["rule"], ban["shadow"]) for ban in bans] == [
        ("198.51.100.1", "by_ip:1/60s", False)
    ]
    for ws in (a, b):
        await ws.disconnect()
        await ws.finished()
    response = await http.post("/unban", headers=AUTH, json={"key": "198.51.100.1"})
    assert (response.status_code, response.json()) == (200, {"lifted": 1})
    assert (await http.get("/bans", headers=AUTH)).json() == {"bans": []}
    assert guard.metrics.snapshot().closes_by_rule == {"disconnect": 1, "content:no_bad": 1}


async def test_revoke_over_http(guard: Guard, http: httpx.AsyncClient) -> None:
    until = time.time() + 60
    response = await http.post("/revoke", headers=AUTH, json={"subject": "alice", "until": until})
    assert (response.status_code, response.json()) == (200, {"closed": 0})
    assert guard.metrics.snapshot().revocations_in_force == 1


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/disconnect", {}, 400, "at least one of subject="),
        ("POST", "/disconnect", {"subject": "a", "code": 1006}, 400, "not 1006"),
        ("POST", "/disconnect", {"subject": "a", "shell": 1}, 400, "unknown fields ['shell']"),
        ("POST", "/revoke", {"jti": "t"}, 400, "revoke needs until"),
        ("POST", "/revoke", {"jti": "t", "until": 1}, 400, "until must be later than now"),
        ("POST", "/unban", {}, 400, "unban needs key"),
        ("POST", "/unban", {"key": 5}, 400, "unban key must be a non-empty string, not 5"),
        ("GET", "/disconnect", None, 405, "/disconnect takes POST"),
        ("POST", "/connections", {}, 405, "/connections takes GET"),
        ("GET", "/", None, 404, "no such route"),
    ],
)
async def test_bad_requests_get_a_clear_answer(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: object,
    status: int,
    error: str,
) -> None:
    response = await http.request(method, path, headers=AUTH, json=body)
    assert response.status_code == status
    assert error in response.json()["error"]


@pytest.mark.parametrize(
    ("content", "status"),
    [(b"[1]", 415), (b"{", 415), (b"\xff", 415), (b"[" * 10_000, 415), (b"x" * 20_000, 413)],
)
async def test_hostile_bodies_never_raise(
    http: httpx.AsyncClient, content: bytes, status: int
) -> None:
    response = await http.post("/unban", headers=AUTH, content=content)
    assert response.status_code == status


async def test_not_started_in_this_loop_is_refused() -> None:
    guard = Guard()
    transport = httpx.ASGITransport(app=admin_app(guard, token=TOKEN))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        response = await client.get("/connections", headers=AUTH)
    assert response.status_code == 503
    assert "same process and event loop" in response.json()["error"]


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("short", "at least 32 characters"),
        (None, "not None"),
        (" " + "a" * 40, "without surrounding spaces"),
        ("é" * 40, "printable ASCII"),
        ("a" * 39 + "\n", "surrounding spaces"),
    ],
)
def test_bad_tokens_are_refused_without_echoing_them(token: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        admin_app(Guard(), token=token)  # type: ignore[arg-type]
    if isinstance(token, str) and len(token) > 5:
        assert token.strip() not in str(info.value)


def test_admin_app_needs_a_guard_and_hides_its_token() -> None:
    with pytest.raises(ConfigurationError, match="admin_app needs a Guard, not 1"):
        admin_app(1, token=TOKEN)  # type: ignore[arg-type]
    assert TOKEN not in repr(admin_app(Guard(), token=TOKEN))
