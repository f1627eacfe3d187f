"""examples/static/reconnect.js in real headless Chromium against a guarded uvicorn app.

The page uses the module as an application would; the test reads what it
recorded (every close, decision, open and message, with page timestamps)
over the DevTools protocol.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import websockets
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import FileResponse, HTMLResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.support.chromium import open_page
from tests.support.reconnect_cases import CASES_PATH, check_js_results
from tests.support.servers import serve
from ws_guard import Guard, WSGuardMiddleware, load
from ws_guard.client import retry_after_hint

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>reconnect.js test</title>
<script type="module">
import { connect } from "/static/reconnect.js";
const now = () => performance.now() / 1000;
window.events = [];
window.conn = connect(`ws://${location.host}/ws`, {
  onOpen: (ws) => { events.push({ t: now(), event: "open" }); ws.send("hello"); },
  onMessage: (e) => events.push({ t: now(), event: "message", data: e.data }),
  onClose: (e) => events.push({ t: now(), event: "close", code: e.code, reason: e.reason }),
  onDecision: (d) => events.push({ t: now(), event: "decision", ...d }),
});
</script>
"""


async def page(request):
    return HTMLResponse(PAGE)


async def runner(request):
    return FileResponse(ROOT / "tests" / "js" / "policy_cases.mjs", media_type="text/javascript")


async def cases(request):
    return FileResponse(CASES_PATH, media_type="application/json")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


def guarded_app(guard: Guard) -> Starlette:
    return Starlette(
        routes=[
            Route("/", page),
            Route("/test/policy_cases.mjs", runner),
            Route("/test/reconnect_cases.json", cases),
            WebSocketRoute("/ws", echo),
            Mount("/static", StaticFiles(directory=ROOT / "examples" / "static")),
        ],
        middleware=[Middleware(WSGuardMiddleware, guard=guard)],
    )


async def test_browser_backs_off_on_1013_until_a_slot_frees() -> None:
    guard = Guard(load=[load.ConnectionCount(limit=1)])
    with serve(guarded_app(guard)) as server:
        holder = await websockets.connect(server.url + "/ws")  # the only slot
        await holder.send("hold")
        assert await holder.recv() == "hold"
        async with open_page(server.http_url + "/") as tab:
            first = await tab.wait_for(
                "(window.events || []).find(e => e.event === 'decision') || null", timeout=20
            )
            await holder.close()  # a slot frees while the page waits
            await tab.wait_for("(window.events || []).some(e => e.event === 'message')", timeout=20)
            events = await tab.evaluate("events")
        snap = guard.metrics.snapshot()

    kinds = [e["event"] for e in events]
    # accept-then-close: the refused socket opens, then gets the 1013 at once
    assert kinds == ["open", "close", "decision", "open", "message"], events
    refused, close, decision, opened, message = events
    assert close["t"] - refused["t"] < 1.0
    assert close["code"] == 1013
    assert close["reason"].startswith("overloaded; retry-after=")
    hint = retry_after_hint(close["reason"])
    assert hint is not None
    assert hint >= 1
    assert decision == first
    assert decision["type"] == "retry"
    assert (decision["code"], decision["reason"], decision["attempt"]) == (1013, close["reason"], 1)
    assert hint <= decision["delay"] <= hint + 1.0  # attempt 1: the hint plus up to 1 s jitter
    assert opened["t"] - close["t"] >= hint - 0.05  # the browser really waited
    assert opened["t"] - close["t"] < hint + 4
    assert message["data"] == "hello"
    assert snap.closes_by_code.get(1013) == 1


async def test_reconnect_js_policy_table_in_chromium() -> None:
    with serve(guarded_app(Guard())) as server:
        async with open_page(server.http_url + "/") as tab:
            await tab.wait_for("typeof window.conn === 'object'", timeout=20)
            raw = await tab.evaluate(
                """(async () => {
                    const lib = await import('/static/reconnect.js');
                    const { runCases } = await import('/test/policy_cases.mjs');
                    const table = await (await fetch('/test/reconnect_cases.json')).json();
                    return JSON.stringify(runCases(lib, table));
                })()"""
            )
    check_js_results(json.loads(raw))


#: Installed before the page's scripts: records every timer, and runs the
#: pending ones on demand, so a test can bring a scheduled reconnect forward
#: instead of sleeping until it would have fired.
TIMERS = """
window.__timers = new Map();
const realSetTimeout = window.setTimeout.bind(window);
const realClearTimeout = window.clearTimeout.bind(window);
window.setTimeout = (fn, ms, ...args) => {
  const id = realSetTimeout(() => { window.__timers.delete(id); fn(...args); }, ms);
  window.__timers.set(id, () => fn(...args));
  return id;
};
window.clearTimeout = (id) => { window.__timers.delete(id); realClearTimeout(id); };
window.__runTimersNow = () => {
  const due = [...window.__timers.entries()];
  for (const [id, run] of due) { window.__timers.delete(id); realClearTimeout(id); run(); }
  return due.length;
};
"""


async def test_demo_page_shows_closes_and_decisions() -> None:
    guard = Guard(load=[load.ConnectionCount(limit=1)])
    with serve(guarded_app(guard)) as server:
        holder = await websockets.connect(server.url + "/ws")
        async with open_page() as tab:
            await tab.call("Page.enable")
            await tab.call("Page.addScriptToEvaluateOnNewDocument", source=TIMERS)
            await tab.call("Page.navigate", url=server.http_url + "/static/reconnect-demo.html")
            text = await tab.wait_for(
                "document.getElementById('log')?.innerText.includes('retry in') && "
                "document.getElementById('log').innerText",
                timeout=20,
            )
            assert 'closed: code 1013 reason "overloaded; retry-after=' in text
            assert "(attempt 1)" in text
            assert await tab.evaluate("window.__timers.size") == 1  # the reconnect, pending
            await tab.evaluate("window.__refused = window.demo.socket")
            await tab.evaluate("document.getElementById('stop').click()")
            await holder.close()  # a reconnect would now succeed, but none may happen
            # Run whatever is still scheduled now, rather than wait out the back-off.
            await tab.evaluate("window.__runTimersNow()")
            assert await tab.evaluate("window.demo.socket === window.__refused")  # no new socket
            text = await tab.evaluate("document.getElementById('log').innerText")
            assert text.count("open") == 1
            assert "stopped by the user" in text
        assert guard.metrics.snapshot().handshakes_rejected == 1
        assert guard.metrics.snapshot().handshakes_admitted == 1  # the holder only
