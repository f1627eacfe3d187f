"""Screenshots of the example pages, for the documentation (not run by CI).

    PYTHONPATH=src python docs/screenshots.py              # writes docs/img/*.png
    PYTHONPATH=src python docs/screenshots.py --out /tmp/shots

Serves ``examples/app.py`` on real uvicorn at 127.0.0.1 (a free port), opens
each page in headless Chromium (``tests/support/chromium.py``: Debian's
``chromium`` with the flags a container needs, driven over the DevTools
protocol), makes the closes the picture should show with the page's own
buttons or the real ``websockets`` client, waits until the page shows them,
and saves the page as PNG (1200 CSS pixels wide, cut below its content):

    example.png         the chat room: a chat line, then a 1009 and a 1003 close
                        and the reconnect policy's decision after each
    reconnect-demo.png  reconnect-demo.html: a message, then a link closed with
                        1008 content:no_links, and the policy's stop
    status.png          the live status page after those closes, with one
                        client still connected

Needs ``chromium`` on PATH and the ``test`` extra (uvicorn, websockets, httpx).
Exits non-zero, naming the page, when a page does not reach the expected state
within its timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the house helpers for servers and Chromium

import websockets  # noqa: E402
from tests.support.chromium import Page, open_page  # noqa: E402
from tests.support.servers import serve  # noqa: E402

APP_PATH = ROOT / "examples" / "app.py"
OUT = ROOT / "docs" / "img"


def load_example() -> ModuleType:
    """examples/app.py as a module of its own (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("ws_guard_example_app", APP_PATH)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {APP_PATH}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def text_of(element_id: str) -> str:
    """A JavaScript expression: the text content of the element with *element_id*."""
    return f"document.getElementById({element_id!r}).textContent"


async def picture(page: Page) -> bytes:
    """The page's content as PNG: the viewport's width, cut below the last element."""
    height = await page.evaluate(
        "Math.ceil(Math.max(...[...document.body.querySelectorAll('*')]"
        ".map((e) => e.getBoundingClientRect().bottom + window.scrollY), 0)) + 24"
    )
    width = await page.evaluate("document.documentElement.clientWidth")
    clip = {"x": 0, "y": 0, "width": width, "height": min(height, 900), "scale": 1}
    shot = await page.call("Page.captureScreenshot", format="png", clip=clip)
    return base64.b64decode(shot["data"])


async def click(page: Page, element_id: str) -> None:
    await page.evaluate(f"document.getElementById({element_id!r}).click()")


async def chat_room(page: Page) -> bytes:
    """The example page: chat, then break two rules with its buttons."""
    await page.wait_for(f"{text_of('status')} === 'open'")
    await page.evaluate(
        "document.getElementById('message').value = 'hello from the browser';"
        "document.getElementById('send-form').requestSubmit()"
    )
    await page.wait_for(f"{text_of('chat')}.includes('hello from the browser')")
    await click(page, "too-big")
    await page.wait_for(f"{text_of('closes')}.includes('policy: stop')")
    await click(page, "reconnect")
    await page.wait_for(f"{text_of('status')} === 'open'")
    await click(page, "binary")
    await page.wait_for(f"{text_of('closes')}.includes('closed 1003')")
    await page.wait_for(f"{text_of('closes')}.split('policy: stop').length === 3")
    return await picture(page)


async def reconnect_demo(page: Page) -> bytes:
    """reconnect-demo.html on the example's /ws: a message, then a 1008 close."""
    await page.wait_for(f"{text_of('log')}.includes('open')")
    for message in ("hello", "see http://example.com"):
        await page.evaluate(
            f"document.getElementById('text').value = {json.dumps(message)};"
            "document.getElementById('form').requestSubmit()"
        )
        await page.wait_for(f"{text_of('log')}.includes({json.dumps('sent: ' + message)})")
    await page.wait_for(f"{text_of('log')}.includes('stop:')")
    return await picture(page)


async def status(page: Page) -> bytes:
    """The status page once it counts every close made above."""
    await page.wait_for(f"{text_of('state')} === 'live'")
    for code in (1003, 1008, 1009):
        row = f"document.querySelector('#closes-by-code tr[data-code=\"{code}\"]')"
        await page.wait_for(f"{row} !== null")
    await page.wait_for(f"{text_of('active')} === '1'")
    return await picture(page)


async def main() -> dict[str, bytes]:
    """Serve the example once and picture its three pages: PNG bytes by file name."""
    example = load_example()
    pictures = {}
    with serve(example.app) as server:
        # A second member, so the room is not empty and the status page counts one open.
        async with websockets.connect(server.url + "/ws", open_timeout=10) as member:
            await member.recv()  # its welcome
            for name, path, scene in (
                ("example.png", "/", chat_room),
                ("reconnect-demo.png", "/static/reconnect-demo.html?ws=/ws", reconnect_demo),
                ("status.png", "/status", status),
            ):
                async with open_page(server.http_url + path) as page:
                    try:
                        pictures[name] = await scene(page)
                    except AssertionError as exc:
                        raise SystemExit(f"{name}: {exc}") from exc
    return pictures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Screenshot the example pages.")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the PNGs ({OUT})")
    folder = parser.parse_args().out
    folder.mkdir(parents=True, exist_ok=True)
    for name, png in asyncio.run(main()).items():
        (folder / name).write_bytes(png)
        print(f"{folder / name}: {len(png)} bytes")
