"""``paths=`` match the route path, also when the app is mounted (root_path).

Current uvicorn (``--root-path``) and Starlette (``Mount``) put the mount
into ``scope["path"]``; a guard that matched ``scope["path"]`` against
``paths=["/ws"]`` let a client with no token reach a mounted handler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect

from tests.support.jwt_keys import SECRET, mint
from tests.support.rate_helpers import read_until_closed
from tests.support.servers import UVICORN_WS, serve
from ws_guard import Guard, WSGuardMiddleware, connection_info, rules
from ws_guard._core.request import route_path

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler"),
]


async def who_echo(websocket: WebSocket) -> None:
    """Accept, answer the first message with the guard's subject, then echo."""
    await websocket.accept()
    info = connection_info(websocket)
    try:
        first = await websocket.receive_text()
        await websocket.send_text(json.dumps({"sub": info.subject if info else None}))
        await websocket.send_text(first)
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


def guarded_app(paths: list[str]) -> Starlette:
    guard = Guard(
        rules=[rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token"))],
        paths=paths,
    )
    return Starlette(
        routes=[WebSocketRoute("/ws", who_echo), WebSocketRoute("/open", who_echo)],
        middleware=[Middleware(WSGuardMiddleware, guard=guard)],
    )


async def refused(url: str) -> tuple[int, str]:
    async with connect(url) as ws:
        received, code, reason = await read_until_closed(ws)
    assert received == []
    return code, reason


async def answered(url: str) -> str | None:
    """Connect, send one message; the subject the app saw (``None``: unguarded)."""
    async with connect(url) as ws:
        await ws.send("hi")
        who = json.loads(await ws.recv())
        assert await ws.recv() == "hi"
    sub: str | None = who["sub"]
    return sub


async def check_layout(base: str) -> None:
    """*base* + ``/ws`` is guarded, *base* + ``/open`` is not."""
    assert await refused(base + "/ws") == (1008, "token_missing")
    assert await refused(base + "/ws?token=forged") == (1008, "token_invalid")
    assert await answered(base + "/ws?token=" + mint("alice")) == "alice"
    assert await answered(base + "/open") is None


@pytest.mark.parametrize("kind", UVICORN_WS)
async def test_uvicorn_root_path_keeps_paths_guarded(kind: str) -> None:
    with serve(guarded_app(["/ws"]), kind, root_path="/api") as server:
        # The proxy in front stripped /api; uvicorn puts it back into scope["path"].
        await check_layout(server.url)


@pytest.fixture
def mounted() -> Iterator[str]:
    app = Starlette(routes=[Mount("/api", app=guarded_app(["/ws"]))])
    with serve(app) as server:
        yield server.url + "/api"


async def test_starlette_mount_keeps_paths_guarded(mounted: str) -> None:
    await check_layout(mounted)


async def test_nested_mounts_keep_paths_guarded() -> None:
    app = Starlette(routes=[Mount("/api", routes=[Mount("/v1", app=guarded_app(["/ws"]))])])
    with serve(app) as server:
        await check_layout(server.url + "/api/v1")


async def test_mount_under_a_uvicorn_root_path_keeps_paths_guarded() -> None:
    app = Starlette(routes=[Mount("/api", app=guarded_app(["/ws"]))])
    with serve(app, root_path="/edge") as server:
        await check_layout(server.url + "/api")


async def test_a_prefix_that_names_the_mount_still_guards_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Starlette(routes=[Mount("/api", app=guarded_app(["/api/ws"]))])
    with serve(app) as server:
        await check_layout(server.url + "/api")
        assert await refused(server.url + "/api/ws") == (1008, "token_missing")
    warnings = [r.getMessage() for r in caplog.records if "matched only the full path" in r.message]
    assert warnings == [
        "ws_guard paths entry '/api/ws' matched only the full path: the app is mounted at "
        "root_path='/api' and routes without it. Guarded anyway; write the route path "
        "(paths=['/ws']) to say what is meant"
    ]


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/ws", "", "/ws"),
        ("/api/ws", "/api", "/ws"),
        ("/api/v1/ws", "/api/v1", "/ws"),
        ("/api", "/api", ""),
        ("/api/", "/api", "/"),
        # root_path not at a segment boundary: not a mount of this path
        ("/apiws", "/api", "/apiws"),
        ("/api/ws", "/api/", "/api/ws"),
        # an older server that leaves root_path out of path
        ("/ws", "/api", "/ws"),
    ],
)
def test_route_path_follows_starlette(path: str, root_path: str, expected: str) -> None:
    assert route_path(path, root_path) == expected
    starlette_utils = pytest.importorskip("starlette._utils")
    scope = {"path": path, "root_path": root_path}
    assert starlette_utils.get_route_path(scope) == expected


@pytest.mark.parametrize(
    ("path", "root_path", "guarded"),
    [
        ("/api/ws", "/api", True),
        ("/api/ws/room", "/api", True),
        ("/api/wsx", "/api", False),
        ("/api/open", "/api", False),
        ("/ws", "/api", True),  # root_path left out of path
        ("/apiws", "/api", False),
        ("/api", "/api", False),
        ("/ws", "", True),
    ],
)
def test_guards_path_matches_the_route_path(path: str, root_path: str, guarded: bool) -> None:
    guard = Guard(paths=["/ws"])
    assert guard.guards_path(path, root_path) is guarded


def test_mount_root_routes_as_slash() -> None:
    assert Guard(paths=["/"]).guards_path("/api", "/api")
    assert not Guard(paths=["/ws"]).guards_path("/api", "/api")


def test_a_prefix_with_the_mount_matches_the_full_path(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ws_guard")
    guard = Guard(paths=["/api/ws"])
    assert guard.guards_path("/api/ws", "/api")
    assert guard.guards_path("/api/ws/room", "/api")
    assert not guard.guards_path("/api/open", "/api")
    assert guard.guards_path("/api/ws", "")  # no mount: the plain match, no warning
    assert len([r for r in caplog.records if "matched only the full path" in r.message]) == 1


async def test_paths_that_match_nothing_below_a_mount_warn_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The guard sits on the outer app, whose route path keeps the mount.
    guard = Guard(
        rules=[rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token"))],
        paths=["/ws"],
    )
    app = Starlette(
        routes=[Mount("/api", routes=[WebSocketRoute("/ws", who_echo)])],
        middleware=[Middleware(WSGuardMiddleware, guard=guard)],
    )
    with serve(app) as server:
        for _ in range(2):
            assert await answered(server.url + "/api/ws") is None  # unguarded, as configured
    warnings = [r.getMessage() for r in caplog.records if "matched no WebSocket path" in r.message]
    assert warnings == [
        "ws_guard paths=['/ws'] matched no WebSocket path yet, and route path '/api/ws' ends "
        "in '/ws' (root_path=''): paths are matched on the route path where the middleware "
        "sits. Add the middleware to the mounted app or name the full route path"
    ]


@pytest.mark.parametrize(
    ("paths", "seen", "warned"),
    [
        (["/ws"], ["/api/ws"], True),
        (["/ws"], ["/api/ws/room"], True),
        (["/ws"], ["/api/wsx"], False),
        (["/ws"], ["/other"], False),
        (["/ws"], ["/ws", "/api/ws"], False),  # something matched first: misses are meant
        (["/chat/"], ["/api/chat/room"], True),
    ],
)
def test_unmatched_warning_needs_a_deeper_prefix(
    paths: list[str], seen: list[str], warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard(paths=paths)
    for path in seen:
        guard.guards_path(path)
    count = len([r for r in caplog.records if "matched no WebSocket path" in r.message])
    assert count == (1 if warned else 0)
