"""The FastAPI setup in docs/guide.md, end to end on real uvicorn.

The guide shows ``examples/fastapi_app.py`` verbatim; the first test keeps the
two equal, the others load the file fresh (its own guard, so counters start at
zero), serve it on uvicorn on 127.0.0.1 and drive it with the real
``websockets`` client and httpx, so every claim the section makes is checked
on the app it shows.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from tests.support.servers import UVICORN_WS, serve

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fastapi_app.py"
GUIDE = ROOT / "docs" / "guide.md"

pytestmark = pytest.mark.e2e


def guide_fastapi_block() -> str:
    """The python code block of the guide's ``### FastAPI`` section."""
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("\n### FastAPI\n", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, f"the FastAPI section has {len(blocks)} python blocks, not 1"
    return str(blocks[0])


def load_source(source: str, name: str) -> ModuleType:
    """Run *source* as a fresh module named *name*."""
    module = ModuleType(name)
    module.__file__ = str(EXAMPLE)
    exec(compile(source, str(EXAMPLE), "exec"), module.__dict__)
    return module


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ws_guard_fastapi_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_line(source: str, line: str) -> str:
    """*source* with the one line containing *line* removed (it must be there once)."""
    lines = source.splitlines(keepends=True)
    hits = [i for i, text in enumerate(lines) if line in text]
    assert len(hits) == 1, f"{line!r} is on {len(hits)} lines of the example"
    del lines[hits[0]]
    return "".join(lines)


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def example() -> ModuleType:
    return load_example()


@pytest.fixture
def server(example: ModuleType) -> Iterator[Any]:
    with serve(example.app) as running:
        yield running


def test_guide_shows_the_example_file_verbatim() -> None:
    assert guide_fastapi_block() == EXAMPLE.read_text(encoding="utf-8")


async def test_text_is_echoed(example: ModuleType, server: Any) -> None:
    async with connect(server.url + "/ws", open_timeout=5, close_timeout=2) as ws:
        for text in ("hello", "é" * 10, ""):
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), 5) == text
    await eventually(lambda: example.guard.metrics.snapshot().active_connections == 0)
    snap = example.guard.metrics.snapshot()
    assert snap.closes_by_code == {1000: 1}
    assert snap.closes_by_initiator == {"client": 1}
    assert snap.closes_by_rule == {}


@pytest.mark.parametrize("ws_impl", UVICORN_WS)
async def test_binary_frame_closes_1003_unsupported_data(ws_impl: str) -> None:
    example = load_example()
    with serve(example.app, ws_impl) as running:
        async with connect(running.url + "/ws", open_timeout=5, close_timeout=2) as ws:
            await ws.send("before")
            assert await asyncio.wait_for(ws.recv(), 5) == "before"
            await ws.send(b"\x00\x01")
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1003, "unsupported_data")
        await eventually(lambda: example.guard.metrics.snapshot().active_connections == 0)
        snap = example.guard.metrics.snapshot()
        assert snap.closes_by_code == {1003: 1}
        assert snap.closes_by_rule == {"unsupported_data": 1}


async def test_message_over_64_kib_closes_1009(example: ModuleType, server: Any) -> None:
    async with connect(server.url + "/ws", open_timeout=5, close_timeout=2) as ws:
        await ws.send("x" * (64 * 1024))  # exactly the limit passes
        assert await asyncio.wait_for(ws.recv(), 5) == "x" * (64 * 1024)
        await ws.send("x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1009, "message_too_big")


@pytest.mark.parametrize(
    ("removed", "code", "reason"),
    [
        # The guard stays: the handler's KeyError becomes 1011, not a dropped socket.
        ("rules.MessageTypes(text=True, binary=False)", 1011, "internal_error"),
        # No guard at all: uvicorn drops TCP after the KeyError; the client sees 1006.
        ("app.add_middleware(WSGuardMiddleware", None, None),
    ],
)
async def test_binary_frame_without_the_rule(removed: str, code: int | None, reason: str) -> None:
    """What the guide says happens when the example lacks the rule or the guard."""
    source = without_line(EXAMPLE.read_text(encoding="utf-8"), removed)
    module = load_source(source, "ws_guard_fastapi_variant")
    with serve(module.app) as running:
        async with connect(running.url + "/ws", open_timeout=5, close_timeout=2) as ws:
            await ws.send(b"\x00\x01")
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(ws.recv(), 5)
    rcvd = closed.value.rcvd
    assert (None if rcvd is None else (rcvd.code, rcvd.reason)) == (
        None if code is None else (code, reason)
    )


async def test_get_metrics_answers_200_with_prometheus_text(
    example: ModuleType, server: Any
) -> None:
    async with connect(server.url + "/ws", open_timeout=5, close_timeout=2) as ws:
        await ws.send(b"\x00")
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), 5)
    await eventually(lambda: example.guard.metrics.snapshot().active_connections == 0)
    response = httpx.get(server.http_url + "/metrics", timeout=5, follow_redirects=False)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert (
        'ws_guard_closes_total{code="1003",initiator="guard",rule="unsupported_data"} 1.0'
        in response.text.splitlines()
    )
    assert "ws_guard_connections 0.0" in response.text.splitlines()
    # A route is not in the OpenAPI schema, and ws_guard left it untouched.
    assert "/metrics" not in httpx.get(server.http_url + "/openapi.json", timeout=5).json()["paths"]


async def test_mounting_metrics_app_redirects_as_the_guide_says() -> None:
    """The guide's reason for a route: a mount answers /metrics with a 307."""
    source = EXAMPLE.read_text(encoding="utf-8")
    line = 'app.add_route("/metrics", metrics_app(guard))'
    assert source.count(line) == 1
    mounted = source.replace(line, 'app.mount("/metrics", metrics_app(guard))')
    for variant, status in (
        (mounted, 307),
        (mounted.replace("FastAPI()", "FastAPI(redirect_slashes=False)"), 404),
    ):
        module = load_source(variant, "ws_guard_fastapi_mounted")
        with serve(module.app) as running:
            response = httpx.get(running.http_url + "/metrics", timeout=5, follow_redirects=False)
            assert response.status_code == status
            if status == 307:
                assert response.headers["location"] == running.http_url + "/metrics/"
                slashed = httpx.get(running.http_url + "/metrics/", timeout=5)
                assert slashed.status_code == 200
