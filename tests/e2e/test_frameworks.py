"""ws_guard in front of every framework it is tested with, end to end.

The same app (tests/support/framework_apps.py) in each framework runs on real
uvicorn on 127.0.0.1, bare and behind a guard, and is driven by the real
``websockets`` client. For each framework: an echo passes, a rule breach
closes with its exact code and reason, and the framework's own refusal
before accept and its own close after accept reach the client exactly as
the bare app sends them. The README's matrix is checked against
:data:`FRAMEWORKS` (tests/project/test_readme_matrix.py).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from tests.support.clients import outcome
from tests.support.django_settings import session_cookie
from tests.support.framework_apps import CLOSED_BY_APP, DENIED, FACTORIES
from tests.support.helpers import eventually
from tests.support.paths import ROOT
from tests.support.servers import ServerThread, serve
from ws_guard import Guard, rules

pytestmark = [
    pytest.mark.e2e,
    # Litestar's /validate declares its query parameter as plain ``room: int``.
    pytest.mark.filterwarnings("ignore:.*query parameter 'room' declared using deprecated"),
]

#: Every framework with an end-to-end test here; the README's framework table lists these.
FRAMEWORKS = ["starlette", "fastapi", "litestar", "channels", "quart", "raw"]

MAX_BYTES = 64
#: The runnable example of each framework (examples/app.py has its own test).
EXAMPLES = {
    "starlette": "examples/app.py",
    "fastapi": "examples/fastapi_app.py",
    "litestar": "examples/litestar_app.py",
    "channels": "examples/channels_app.py",
    "quart": "examples/quart_app.py",
    "raw": "examples/raw_app.py",
}


def new_guard() -> Guard:
    # No paths: every WebSocket path is guarded, the framework's refusals included.
    return Guard(rules=[rules.MaxMessageSize(MAX_BYTES), rules.MessageTypes(binary=False)])


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def guard() -> Guard:
    return new_guard()


@pytest.fixture
def guarded(framework: str, guard: Guard) -> Iterator[ServerThread]:
    with serve(FACTORIES[framework](guard)) as server:
        yield server


def test_every_framework_has_an_app_and_an_example() -> None:
    assert list(FACTORIES) == list(EXAMPLES) == FRAMEWORKS
    assert [path for path in EXAMPLES.values() if not (ROOT / path).is_file()] == []


async def closes_counted(guard: Guard, expected: dict[int, int]) -> None:
    """Wait until the guard has counted exactly *expected* closes by code."""

    def counted() -> bool:
        return dict(guard.metrics.snapshot().closes_by_code) == expected

    await eventually(counted, what=f"closes_by_code == {expected}")


async def test_an_echo_passes(guarded: ServerThread, guard: Guard) -> None:
    async with connect(guarded.url + "/ws", open_timeout=5, close_timeout=5) as ws:
        for text in ("hello", "x" * MAX_BYTES):  # the limit itself is allowed
            await ws.send(text)
            assert await ws.recv(decode=True) == f"echo:{text}"
    assert (ws.close_code, ws.close_reason) == (1000, "")
    await closes_counted(guard, {1000: 1})
    assert dict(guard.metrics.snapshot().closes_by_rule) == {}


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        pytest.param("x" * (MAX_BYTES + 1), 1009, "message_too_big", id="too-big"),
        pytest.param(b"\x00", 1003, "unsupported_data", id="binary"),
    ],
)
async def test_a_rule_breach_closes_with_its_code_and_reason(
    guarded: ServerThread, guard: Guard, message: str | bytes, code: int, reason: str
) -> None:
    url = guarded.url + "/ws"
    async with connect(url, open_timeout=5, close_timeout=5) as ws:
        await ws.send("first")
        assert await ws.recv(decode=True) == "echo:first"
        await ws.send(message)
        with pytest.raises(ConnectionClosedError):
            await ws.recv()
    assert (ws.close_code, ws.close_reason) == (code, reason)
    await closes_counted(guard, {code: 1})
    assert dict(guard.metrics.snapshot().closes_by_rule) == {reason: 1}


async def test_the_frameworks_own_refusal_and_close_pass_through_unchanged(
    framework: str, guarded: ServerThread, guard: Guard
) -> None:
    with serve(FACTORIES[framework](None)) as bare:
        bare_seen = [await outcome(bare.url + path) for path in ("/deny", "/close")]
    guarded_seen = [await outcome(guarded.url + path) for path in ("/deny", "/close")]
    assert bare_seen == guarded_seen == [DENIED[framework], CLOSED_BY_APP]
    # Counted by what the client saw: the server's 403, the app's own close code.
    await closes_counted(guard, {403: 1, 4403: 1})
    assert dict(guard.metrics.snapshot().closes_by_rule) == {}


async def http_refusal(url: str) -> tuple[int, dict[str, str], bytes]:
    """The whole HTTP response a refused handshake gets: status, headers (no ``date``), body."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, open_timeout=5, close_timeout=5):
            pass  # pragma: no cover
    response = refused.value.response
    headers = {k.lower(): v for k, v in response.headers.raw_items() if k.lower() != "date"}
    return response.status_code, headers, bytes(response.body or b"")


async def test_the_frameworks_own_refusal_is_the_same_http_response_guarded(
    framework: str, guarded: ServerThread, guard: Guard
) -> None:
    """Status, headers and body: Quart's abort(403) page, the server's empty 403 elsewhere."""
    with serve(FACTORIES[framework](None)) as bare:
        expected = await http_refusal(bare.url + "/deny")
    assert await http_refusal(guarded.url + "/deny") == expected
    assert expected[0] == 403
    assert (b"Forbidden" in expected[2]) == (framework == "quart")
    await closes_counted(guard, {403: 1})


async def test_litestars_parameter_validation_refusal_passes_through(guard: Guard) -> None:
    with serve(FACTORIES["litestar"](None)) as bare:
        bare_seen = [await outcome(bare.url + path) for path in ("/validate", "/validate?room=x")]
    with serve(FACTORIES["litestar"](guard)) as server:
        for path in ("/validate", "/validate?room=x"):  # missing, then not an int
            assert await outcome(server.url + path) == ("http", 403)
        assert await outcome(server.url + "/validate?room=3") == ("closed", ("room:3",), (1000, ""))
    assert bare_seen == [("http", 403), ("http", 403)]
    await closes_counted(guard, {403: 2, 1000: 1})
    assert dict(guard.metrics.snapshot().closes_by_rule) == {}


def load_example(framework: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of the framework's example: its own guard, counters at zero.

    In ``sys.modules`` for the test (Litestar resolves handler annotations there).
    """
    name = f"ws_guard_example_{framework}"
    spec = importlib.util.spec_from_file_location(name, ROOT / EXAMPLES[framework])
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("framework", [f for f in FRAMEWORKS if f != "starlette"])
async def test_the_example_echoes_closes_1009_and_refuses_members(
    framework: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = load_example(framework, monkeypatch)
    limit = 64 * 1024  # the examples' MaxMessageSize
    with serve(example.app) as server:
        async with connect(server.url + "/ws", open_timeout=5, close_timeout=5) as ws:
            await ws.send("hello")
            assert await ws.recv(decode=True) == "hello"
        assert await outcome(server.url + "/ws", "x" * (limit + 1)) == (
            "closed",
            (),
            (1009, "message_too_big"),
        )
        if framework != "fastapi":  # its example has no /members
            assert await outcome(server.url + "/members") == ("http", 403)
    expected = {1000: 1, 1009: 1} if framework == "fastapi" else {1000: 1, 1009: 1, 403: 1}
    await closes_counted(example.guard, expected)


async def test_channels_auth_middleware_stack_sees_the_session_through_the_guard(
    guard: Guard,
) -> None:
    # The guard wraps ProtocolTypeRouter; the cookie still reaches Channels'
    # session and auth middleware, which logs the member in.
    with serve(FACTORIES["channels"](guard)) as server:
        url = server.url + "/deny"
        headers = {"Cookie": session_cookie(7)}
        async with connect(url, additional_headers=headers, open_timeout=5) as ws:
            assert await ws.recv(decode=True) == "welcome:7"
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1000, "")
        assert await outcome(url) == ("http", 403)  # no cookie: anonymous, refused
    await closes_counted(guard, {1000: 1, 403: 1})
