"""The subprotocol token source in a real browser (headless Chromium over DevTools).

Browsers can set no header on a WebSocket except ``Sec-WebSocket-Protocol``,
and they fail a handshake whose response picks none of the offered
subprotocols: the page then sees 1006 and no reason. These tests check that a
browser gets in with ``["access_token", jwt]``, and that a refused or expired
token reaches the page as 1008 with its reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.support.chromium import Page, open_page
from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import SECRET, mint
from tests.support.servers import ServerThread, serve
from ws_guard import Guard, WSGuardMiddleware, rules

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# Opens a socket from the page and resolves with what the page could observe.
SCRIPT = """
new Promise((resolve) => {
  const seen = {messages: []};
  const ws = new WebSocket(%(url)s, %(protocols)s);
  ws.onopen = () => { seen.protocol = ws.protocol; if (%(say)s) ws.send("hi"); };
  ws.onmessage = (e) => {
    seen.messages.push(e.data);
    if (%(leave)s && seen.messages.length == 2) ws.close(1000);
  };
  ws.onclose = (e) => { seen.code = e.code; seen.reason = e.reason; resolve(seen); };
})
"""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_subprotocol())
    with serve(WSGuardMiddleware(whoami, guard=Guard(rules=[rule]))) as thread:
        yield thread


async def run_in_page(page: Page, url: str, protocols: list[str], *, say: bool) -> dict:
    expression = SCRIPT % {
        "url": json.dumps(url),
        "protocols": json.dumps(protocols),
        "say": "true" if say else "false",
        "leave": "true" if say else "false",
    }
    return dict(await page.evaluate(expression))


async def test_browser_subprotocol_token(server: ServerThread) -> None:
    url = f"{server.url}/ws"
    async with open_page() as page:
        ok = await run_in_page(page, url, ["access_token", mint("browser")], say=True)
        assert ok["protocol"] == "access_token"
        assert json.loads(ok["messages"][0])["sub"] == "browser"
        assert ok["messages"][1] == "hi"
        assert ok["code"] == 1000

        expired = await run_in_page(page, url, ["access_token", mint(exp_in=-1)], say=False)
        assert (expired["code"], expired["reason"]) == (1008, "token_expired")

        started = time.time()
        token = mint("soon", exp_in=2)
        live = await run_in_page(page, url, ["access_token", token], say=False)
        assert (live["code"], live["reason"]) == (1008, "token_expired")
        assert time.time() - started < 3.5
