"""The example app (examples/app.py) and the README's usage example, end to end.

The app is loaded fresh for each test, so its guard's counters and its room
start empty and can be asserted exactly. It runs on real uvicorn and is
driven by the real ``websockets`` client; the page is also driven in headless
chromium, so the codes a person sees in a browser are checked too.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from tests.support.children import signal_group, spawn, stop
from tests.support.chromium import open_page
from tests.support.servers import free_port, serve
from ws_guard import Guard
from ws_guard.testing import ScriptedWebSocket

ROOT = Path(__file__).resolve().parents[2]
APP_PATH = ROOT / "examples" / "app.py"

pytestmark = pytest.mark.e2e


def load_example() -> ModuleType:
    """A fresh copy of examples/app.py: its own guard, room and guest numbers."""
    spec = importlib.util.spec_from_file_location("ws_guard_example_app", APP_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example() -> ModuleType:
    return load_example()


@pytest.fixture
def server(example: ModuleType) -> Iterator[Any]:
    with serve(example.app) as running:
        yield running


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), 5)))


@contextlib.asynccontextmanager
async def member(url: str, name: str, online: int) -> AsyncIterator[ClientConnection]:
    """A client in the room, past its welcome and its own join announcement."""
    async with connect(url + "/ws", open_timeout=5, close_timeout=2) as ws:
        assert await recv_json(ws) == {
            "type": "welcome",
            "you": name,
            "max_message_bytes": 1024,
            "forbidden_word": "spam",
        }
        assert await recv_json(ws) == {"type": "joined", "who": name, "online": online}
        yield ws


async def eventually(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- the page ------------------------------------------------------------------


def test_homepage_serves_the_page_and_its_script(server: Any) -> None:
    page = httpx.get(server.http_url + "/", timeout=5)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for element in ('id="too-big"', 'id="binary"', 'id="link"', 'id="forbidden"'):
        assert element in page.text
    assert 'id="reconnect"' in page.text
    assert 'id="closes"' in page.text
    assert '<script type="module" src="/static/app.js">' in page.text

    script = httpx.get(server.http_url + "/static/app.js", timeout=5)
    assert script.status_code == 200
    assert 'from "/static/reconnect.js"' in script.text
    assert httpx.get(server.http_url + "/static/reconnect.js", timeout=5).status_code == 200
    assert httpx.get(server.http_url + "/static/style.css", timeout=5).status_code == 200


async def test_status_page_status_json_and_metrics_are_served(server: Any) -> None:
    async with member(server.url, "guest-1", 1) as ws:
        await ws.send("x" * 1025)
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), 5)
    page = httpx.get(server.http_url + "/status", timeout=5)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '"status.json"' in page.text

    async def closed_once() -> bool:
        data = httpx.get(server.http_url + "/status.json", timeout=5).json()
        return bool(data["closes_by_code"] == {"1009": 1} and data["active_connections"] == 0)

    deadline = time.monotonic() + 5
    while not await closed_once():
        assert time.monotonic() < deadline, "status.json never showed the close"
        await asyncio.sleep(0.02)
    metrics = httpx.get(server.http_url + "/metrics", timeout=5)
    assert metrics.status_code == 200
    assert (
        'ws_guard_closes_total{code="1009",initiator="guard",rule="message_too_big"} 1.0'
        in metrics.text
    )


# -- the room --------------------------------------------------------------------


async def test_chat_reaches_every_member_and_departures_are_announced(
    example: ModuleType, server: Any
) -> None:
    async with member(server.url, "guest-1", 1) as alice:
        async with member(server.url, "guest-2", 2) as bob:
            assert await recv_json(alice) == {"type": "joined", "who": "guest-2", "online": 2}
            await alice.send("hello")
            expected = {"type": "chat", "from": "guest-1", "text": "hello"}
            assert await recv_json(alice) == expected
            assert await recv_json(bob) == expected
            # Exactly the limit in UTF-8 bytes (512 two-byte characters) passes.
            await bob.send("é" * 512)
            assert (await recv_json(alice))["text"] == "é" * 512
        assert await recv_json(alice) == {"type": "left", "who": "guest-2", "online": 1}
    snap = example.guard.metrics.snapshot()
    assert snap.closes_by_rule == {}
    assert snap.handshakes_admitted == 2


PROVOKED = [
    pytest.param("x" * 1025, 1009, "message_too_big", "message_too_big", id="oversize"),
    pytest.param("é" * 513, 1009, "message_too_big", "message_too_big", id="oversize-utf8"),
    pytest.param(b"\x00\x01\x02", 1003, "unsupported_data", "unsupported_data", id="binary"),
    pytest.param(
        "have a look at http://example.com",
        1008,
        "content:no_links",
        "content:no_links",
        id="link",
    ),
    pytest.param("buy SPAM now", 1008, "content:no_spam", "content:no_spam", id="forbidden"),
]


@pytest.mark.parametrize(("payload", "code", "reason", "rule"), PROVOKED)
async def test_each_rule_closes_with_its_code_and_reason(
    example: ModuleType, server: Any, payload: str | bytes, code: int, reason: str, rule: str
) -> None:
    async with (
        member(server.url, "guest-1", 1) as watcher,
        member(server.url, "guest-2", 2) as offender,
    ):
        assert await recv_json(watcher) == {"type": "joined", "who": "guest-2", "online": 2}
        await offender.send(payload)
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(offender.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (code, reason)
        # The app saw an ordinary disconnect: its handler ended and left the room,
        # and the message never reached the room.
        assert await recv_json(watcher) == {"type": "left", "who": "guest-2", "online": 1}
        snap = example.guard.metrics.snapshot()
        assert dict(snap.closes_by_code) == {code: 1}
        assert dict(snap.closes_by_rule) == {rule: 1}
        assert dict(snap.closes_by_initiator) == {"guard": 1}
        # The handler announces its departure just before it returns; the guard
        # then finishes the connection, so the count drops a moment later.
        await eventually(lambda: example.guard.metrics.snapshot().active_connections == 1)


async def test_a_flood_is_rate_limited(example: ModuleType, server: Any) -> None:
    async with member(server.url, "guest-1", 1) as ws:
        for i in range(30):
            await ws.send(f"flood {i}")
        echoed: list[str] = []

        async def read_until_closed() -> None:
            while True:
                echoed.append((await recv_json(ws))["text"])

        with pytest.raises(ConnectionClosedError) as closed:
            await read_until_closed()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "rate_limited; retry-after=1"
        # Exactly the first MESSAGES_PER_SECOND reached the room, in order.
        assert echoed == [f"flood {i}" for i in range(example.MESSAGES_PER_SECOND)]
    snap = example.guard.metrics.snapshot()
    assert dict(snap.closes_by_rule) == {"rate_limited": 1}


async def test_a_word_that_only_contains_the_forbidden_word_passes(server: Any) -> None:
    async with member(server.url, "guest-1", 1) as ws:
        await ws.send("spammer, spamming")  # the pattern matches the whole word only
        assert (await recv_json(ws))["text"] == "spammer, spamming"


async def test_example_app_in_process_with_scripted_websocket(example: ModuleType) -> None:
    ws = ScriptedWebSocket(example.app, "/ws")
    await ws.connect()
    await ws.expect("websocket.accept")
    welcome = await ws.expect("websocket.send")
    assert json.loads(welcome["text"])["you"] == "guest-1"
    await ws.expect("websocket.send", text='{"type":"joined","who":"guest-1","online":1}')
    await ws.send_text("hi")
    await ws.expect("websocket.send", text='{"type":"chat","from":"guest-1","text":"hi"}')
    await ws.send_bytes(b"\x00")
    await ws.expect("websocket.close", code=1003, reason="unsupported_data")
    await ws.finished()
    assert example.room.members == {}
    assert example.guard.metrics.snapshot().dropped_sends == 0


# -- python examples/app.py --------------------------------------------------------


async def test_script_serves_the_app_on_the_given_port() -> None:
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    process = spawn(
        [sys.executable, str(APP_PATH), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                assert process.poll() is None, "examples/app.py exited early"
                with contextlib.suppress(httpx.TransportError):
                    page = await client.get(base + "/")
                    break
                assert time.monotonic() < deadline, "examples/app.py did not serve / in 20 s"
                await asyncio.sleep(0.1)
        assert page.status_code == 200
        assert "ws_guard example chat" in page.text
        async with member(f"ws://127.0.0.1:{port}", "guest-1", 1) as ws:
            await ws.send("x" * 2000)
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGKILL)
            output, _ = process.communicate(timeout=10)
        finally:  # on an interrupt too, nothing of its group stays
            stop(process, signal.SIGKILL)
    # The script shows ws_guard's log line for the close.
    assert "ws_guard closed connection code=1009 rule=message_too_big" in output


# -- the README's usage example -------------------------------------------------------


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, "README.md has no python example"
    return blocks[0]


async def test_readme_usage_example_runs() -> None:
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    guard = namespace["guard"]
    assert isinstance(guard, Guard)
    with serve(namespace["app"]) as running:
        async with connect(running.url + "/ws", open_timeout=5) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 5) == "hello"
            await ws.send("x" * (64 * 1024 + 1))
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1009, "message_too_big")
        assert guard.metrics.snapshot().closes_by_code == {1009: 1}


# -- the page in a real browser -------------------------------------------------------


@pytest.mark.browser
async def test_page_shows_each_close_code_and_reason_in_a_browser(server: Any) -> None:
    last_close = "[...document.querySelectorAll('#closes li.close')].pop()?.textContent ?? ''"
    last_decision = "[...document.querySelectorAll('#closes li.decision')].pop()?.textContent ?? ''"
    async with open_page() as page:
        await page.call("Page.navigate", url=server.http_url + "/")
        await page.wait_for("document.getElementById('status')?.textContent", equals="open")
        await page.wait_for("document.getElementById('me').textContent", equals="(you are guest-1)")
        for count, (button, shown) in enumerate(
            [
                ("too-big", "closed 1009 message_too_big → message too big"),
                ("binary", "closed 1003 unsupported_data → unsupported data"),
                ("link", "closed 1008 content:no_links → policy violation"),
                ("forbidden", "closed 1008 content:no_spam → policy violation"),
            ],
            start=1,
        ):
            await page.evaluate(f"document.getElementById('{button}').click()")
            await page.wait_for(
                "document.querySelectorAll('#closes li.close').length", equals=count
            )
            text = await page.evaluate(last_close)
            assert shown in text, text
            # reconnect.js's policy: these codes mean "fix the client", never a blind retry.
            await page.wait_for(
                "document.querySelectorAll('#closes li.decision').length", equals=count
            )
            assert "policy: stop" in await page.evaluate(last_decision)
            await page.wait_for("document.getElementById('status').textContent", equals="closed")
            assert await page.evaluate("document.getElementById('link').disabled") is True
            await page.evaluate("document.getElementById('reconnect').click()")
            await page.wait_for("document.getElementById('status').textContent", equals="open")
        # A chat message round-trips through the room.
        await page.evaluate(
            "document.getElementById('message').value = 'hello from the browser';"
            "document.getElementById('send-form').requestSubmit()"
        )
        await page.wait_for(
            "[...document.querySelectorAll('#chat li')].some("
            "li => li.textContent.endsWith('guest-5: hello from the browser'))",
            equals=True,
        )
