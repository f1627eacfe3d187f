"""Transparency: a guard with no rules changes nothing a client sees, beyond a documented list.

Every behaviour of ``tests/support/transparency_app.py`` (plain ASGI, Starlette and
FastAPI endpoints) runs on real servers, bare and behind
``WSGuardMiddleware(app, guard=Guard())``: uvicorn with each of its three
WebSocket implementations and hypercorn on asyncio and on trio, each a
subprocess serving every behaviour on its own path (so ten server starts in
all). The client is the real ``websockets`` client; what it sees (HTTP
status and headers, messages, the close frame it received, a rejection's
body) must be identical bare and guarded, except where a case names an id
from the table "Differences behind a guard with no rules" in
``docs/servers.md``; then the guarded result must be exactly the bare one
changed as that row says. The table is parsed here, so the page stays the
single list: an id a case names must be in it, and every id in it must be
named by a case.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.children import spawn, stop
from tests.support.paths import ROOT, SERVER_PATH
from tests.support.servers import free_port
from tests.support.transparency_app import REASON_123

pytestmark = pytest.mark.e2e

DOC = ROOT / "docs" / "servers.md"
TABLE_HEADING = "## Differences behind a guard with no rules"

#: (server, its command-line arguments before the app and port), in test order.
SERVERS: dict[str, list[str]] = {
    "uvicorn-websockets-sansio": ["uvicorn", "--ws", "websockets-sansio"],
    "uvicorn-websockets": ["uvicorn", "--ws", "websockets"],
    "uvicorn-wsproto": ["uvicorn", "--ws", "wsproto"],
    "hypercorn-asyncio": ["hypercorn", "-k", "asyncio"],
    "hypercorn-trio": ["hypercorn", "-k", "trio"],
}
#: Every server runs as if mounted below a proxy's prefix: the app sees it as
#: ``root_path``; uvicorn also puts it in front of ``path``, hypercorn does not.
ROOT_PATH = "/mounted"
#: Seconds a server gets to listen, a case to finish (both bounded, polled).
START_TIMEOUT = 30.0
CASE_TIMEOUT = 10.0
#: Response headers that are server noise: the clock, the server's name, and
#: the accept key derived from the client's random handshake key.
NOISE = frozenset({"date", "server", "sec-websocket-accept"})


def command(server: str, port: int) -> list[str]:
    """The command line that serves ``tests.support.transparency_app:app`` on *server* at *port*."""
    name, *options = SERVERS[server]
    common = ["--root-path", ROOT_PATH]
    if name == "uvicorn":
        where = ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "on"]
        quiet = ["--log-level", "warning"]
    else:
        # -w 0: serve in this process (a worker would outlive a signal to the parent alone).
        where = ["--bind", f"127.0.0.1:{port}", "-w", "0"]
        quiet = ["--log-level", "WARNING"]
    return [
        sys.executable,
        "-m",
        name,
        "tests.support.transparency_app:app",
        *options,
        *where,
        *common,
        *quiet,
    ]


@dataclass
class Running:
    """One server subprocess: its port, log file and process."""

    port: int
    log: Path
    process: subprocess.Popen[Any]
    ready: bool = False

    def wait_ready(self) -> None:
        """Poll until the port accepts connections; RuntimeError with the log if it never does."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.ready:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                self.ready = True
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"server did not listen on {self.port} (exit {self.process.poll()}):\n{tail}"
                )
            time.sleep(0.05)


@dataclass
class Pool:
    """Every (server, guarded) pair, started together at first use, stopped at the end."""

    logs: Path
    running: dict[tuple[str, bool], Running] = field(default_factory=dict)
    files: list[TextIO] = field(default_factory=list)

    def start_all(self) -> None:
        env = dict(os.environ, PYTHONPATH=SERVER_PATH)
        env.pop("GUARDED", None)
        for server in SERVERS:
            for guarded in (False, True):
                port = free_port()
                log = self.logs / f"{server}-{'guarded' if guarded else 'bare'}.log"
                out = log.open("w")
                self.files.append(out)
                process = spawn(
                    command(server, port),
                    env={**env, "GUARDED": "1"} if guarded else env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                self.running[server, guarded] = Running(port, log, process)

    def port(self, server: str, guarded: bool) -> int:
        if not self.running:
            self.start_all()
        running = self.running[server, guarded]
        running.wait_ready()
        return running.port

    def stop_all(self) -> None:
        for running in self.running.values():
            stop(running.process, grace=5.0)
        for out in self.files:
            out.close()


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    pool = Pool(tmp_path_factory.mktemp("transparency"))
    try:
        yield pool
    finally:
        pool.stop_all()


# -- what a client sees ---------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A case's client-visible result.

    ``status``: the handshake's HTTP status (101 when accepted); ``headers``:
    the response headers but :data:`NOISE`, in order; ``body``: a
    rejection's body; ``messages``: what was received, in order; ``close``:
    the close frame received ``(code, reason)``, None when the TCP
    connection ended without one (the client reports 1006); ``report``: what
    the app said it received (client-close case).
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    messages: tuple[str | bytes, ...] = ()
    close: tuple[int, str] | None = None
    report: Any = None


def _headers(raw: Any) -> tuple[tuple[str, str], ...]:
    return tuple((k.lower(), v) for k, v in raw.raw_items() if k.lower() not in NOISE)


async def _report(http_url: str, ident: str) -> Any:
    """Poll ``/report`` until the app has stored what the client's close delivered."""
    async with httpx.AsyncClient(base_url=http_url, timeout=2.0) as client:
        while True:
            response = await client.get("/report", params={"id": ident})
            if response.status_code == 200:
                return response.json()
            await asyncio.sleep(0.02)


async def observe(port: int, case: Case) -> Seen:
    """Run *case* against the server on *port*: connect, send its messages, read to the end."""
    path = case.path
    ident = uuid.uuid4().hex
    if case.client_close is not None:
        path += f"?id={ident}"
    url = f"ws://127.0.0.1:{port}{path}"
    try:
        async with connect(
            url, subprotocols=case.subprotocols, open_timeout=5, close_timeout=5
        ) as ws:
            response = ws.response
            assert response is not None
            received: list[str | bytes] = []
            try:
                for message in case.send:
                    await ws.send(message)
                if case.client_close is not None:
                    await ws.close(*case.client_close)
                while True:
                    received.append(await ws.recv())
            except ConnectionClosed as closed:
                rcvd = closed.rcvd
                report = None
                if case.client_close is not None:
                    report = await _report(f"http://127.0.0.1:{port}", ident)
                return Seen(
                    status=response.status_code,
                    headers=_headers(response.headers),
                    # The port is the server's own (bare and guarded differ): noise.
                    messages=tuple(
                        m.replace(f":{port}", ":<port>") if isinstance(m, str) else m
                        for m in received
                    ),
                    close=(rcvd.code, rcvd.reason) if rcvd is not None else None,
                    report=report,
                )
    except InvalidStatus as refused:
        return Seen(
            status=refused.response.status_code,
            headers=_headers(refused.response.headers),
            body=refused.response.body or b"",
        )


# -- the cases ------------------------------------------------------------------------

Change = Callable[[Seen], Seen]


def closes_with(code: int, reason: str) -> Change:
    """The bare result, but closed with *code* and *reason*."""
    return lambda seen: dataclasses.replace(seen, close=(code, reason))


def scope_gains_ws_guard(seen: Seen) -> Seen:
    """The bare result, but the scope's key list also holds ``ws_guard``."""
    text = seen.messages[0]
    assert isinstance(text, str)
    view = json.loads(text)
    view["keys"] = sorted([*view["keys"], "ws_guard"])
    return dataclasses.replace(
        seen, messages=(json.dumps(view, sort_keys=True), *seen.messages[1:])
    )


@dataclass(frozen=True)
class Case:
    """One behaviour: where, what the client sends, and the documented differences.

    ``differs``: ids of the documentation table this case may show;
    ``change``: the bare result turned into the guarded one those rows
    promise (None: identical); ``expect``: fields of the guarded result that
    are the same on every server (so a broken harness cannot pass by seeing
    nothing on both sides); ``bug``: what is wrong today on every server (the
    case is a strict xfail until it is fixed).
    """

    name: str
    path: str
    send: tuple[str | bytes, ...] = ()
    subprotocols: tuple[str, ...] | None = None
    client_close: tuple[int, str] | None = None
    differs: tuple[str, ...] = ()
    change: Change | None = None
    expect: dict[str, Any] = field(default_factory=dict)
    bug: str = ""


CASES = [
    Case(
        "accept-subprotocol-headers",
        "/raw/accept-headers",
        subprotocols=("chat.v2", "chat.v1"),
        expect={"status": 101, "messages": ("accepted",), "close": (1000, "")},
    ),
    Case(
        "echo-text-bytes",
        "/raw/echo",
        send=("hello", b"\x00\x01\xff", "bye"),
        expect={"messages": ("hello", b"\x00\x01\xff"), "close": (1000, "bye")},
    ),
    Case("close-1000", "/raw/close-1000", expect={"messages": ("hi",), "close": (1000, "")}),
    Case(
        "close-4000-reason",
        "/raw/close-4000-reason",
        expect={"messages": ("hi",), "close": (4000, "custom reason")},
    ),
    Case(
        "close-reason-123-bytes",
        "/raw/close-reason-123",
        expect={"messages": ("hi",), "close": (4000, REASON_123)},
    ),
    Case(
        "close-reason-130-bytes",
        "/raw/close-reason-130",
        differs=("reason-cut-123",),
        change=closes_with(4000, "é" * 61),
        expect={"messages": ("hi",)},
    ),
    *(
        Case(
            f"close-invalid-code-{code}",
            f"/raw/close-code?code={code}",
            differs=("unsendable-close-code",),
            # 1005 means "no status": a normal close; any other such code is an app bug.
            change=closes_with(1000 if code == 1005 else 1011, ""),
            expect={"messages": ("hi",), "close": (1000 if code == 1005 else 1011, "")},
        )
        for code in (999, 1004, 1005, 1006, 1015, 2999, 5000)
    ),
    Case("deny-403", "/raw/deny", expect={"status": 403}),
    Case("deny-http-response", "/raw/deny-response", expect={"status": 403, "body": b"go away"}),
    Case(
        "scope", "/raw/scope?a=1&b=%C3%A9", differs=("scope-ws-guard",), change=scope_gains_ws_guard
    ),
    Case(
        "lifespan-state", "/raw/lifespan-state", expect={"messages": ("yes",), "close": (1000, "")}
    ),
    Case("raise-before-accept", "/raw/raise-before-accept", expect={"status": 500}),
    Case(
        "raise-after-accept",
        "/raw/raise-after-accept",
        differs=("app-crash-1011",),
        change=closes_with(1011, "internal_error"),
        expect={"messages": ("hi",)},
    ),
    Case(
        "return-while-open",
        "/raw/return-open",
        differs=("app-return-1000",),
        change=closes_with(1000, ""),
        expect={"messages": ("hi",)},
    ),
    Case("return-value", "/raw/return-value", expect={"status": 101, "close": (1000, "")}),
    Case(
        "return-value-while-open",
        "/raw/return-value-open",
        differs=("app-return-1000",),
        change=closes_with(1000, ""),
        expect={"messages": ("hi",)},
    ),
    Case(
        "accept-twice",
        "/raw/accept-twice",
        differs=("app-crash-1011",),
        change=closes_with(1011, "internal_error"),
        expect={"messages": ("hi",)},
    ),
    Case(
        "raise-websocket-disconnect",
        "/raw/raise-disconnect",
        differs=("app-crash-1011",),
        change=closes_with(1011, "internal_error"),
        expect={"messages": ("hi",)},
    ),
    Case(
        "eager-accept",
        "/raw/eager-accept",
        send=("hi",),
        expect={"messages": ("websocket.connect", "websocket.receive")},
    ),
    Case(
        "client-close-seen-by-app",
        "/raw/client-close",
        client_close=(4002, "client bye"),
        expect={"close": (4002, "client bye")},
    ),
    Case(
        "starlette-endpoint",
        "/starlette/echo",
        subprotocols=("chat",),
        send=("text", b"bytes"),
        expect={"messages": ("text", b"bytes", '{"state":"yes"}'), "close": (4001, "done")},
    ),
    Case(
        "starlette-crash",
        "/starlette/crash",
        differs=("app-crash-1011",),
        change=closes_with(1011, "internal_error"),
        expect={"messages": ("hi",)},
    ),
    Case("fastapi-endpoint", "/fastapi/room?room=7", expect={"messages": ("room 7",)}),
    Case("fastapi-validation-close", "/fastapi/room", expect={"status": 403}),
]


def params() -> Iterator[Any]:
    for server in SERVERS:
        for case in CASES:
            reason = case.bug
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(server, case, id=f"{server}-{case.name}", marks=marks)


@dataclass
class Tally:
    """What the module's comparisons showed: the passed ones, and which ids really differed."""

    passed: set[str] = field(default_factory=set)  # "<server>-<case>"
    shown: dict[str, set[str]] = field(default_factory=dict)  # id -> "<server>-<case>"


@pytest.fixture(scope="module")
def tally() -> Tally:
    return Tally()


@pytest.mark.parametrize(("server", "case"), list(params()))
async def test_guarded_client_sees_what_bare_client_sees(
    pool: Pool, tally: Tally, server: str, case: Case
) -> None:
    bare_port = pool.port(server, False)
    guarded_port = pool.port(server, True)
    # wait_for, not asyncio.timeout: the suite runs on Python 3.10 too.
    bare = await asyncio.wait_for(observe(bare_port, case), CASE_TIMEOUT)
    guarded = await asyncio.wait_for(observe(guarded_port, case), CASE_TIMEOUT)
    for name, value in case.expect.items():
        assert getattr(guarded, name) == value, f"{name}: {guarded}"
    expected = case.change(bare) if case.change is not None else bare
    if guarded != bare:
        assert case.differs, f"undocumented difference:\nbare:    {bare}\nguarded: {guarded}"
    assert guarded == expected, f"\nbare:    {bare}\nguarded: {guarded}"
    tally.passed.add(f"{server}-{case.name}")
    if guarded != bare:
        for ident in case.differs:
            tally.shown.setdefault(ident, set()).add(f"{server}-{case.name}")


# -- the documented list --------------------------------------------------------------


def documented_ids() -> dict[str, str]:
    """The ids of the table under :data:`TABLE_HEADING` in docs/servers.md → its row."""
    text = DOC.read_text()
    start = text.index(TABLE_HEADING)
    end = text.find("\n## ", start + len(TABLE_HEADING))
    rows = {}
    for line in text[start : end if end != -1 else len(text)].splitlines():
        found = re.match(r"\|\s*`([a-z0-9-]+)`\s*\|", line)
        if found:
            rows[found.group(1)] = line
    return rows


def test_the_documented_table_and_the_cases_name_the_same_differences() -> None:
    documented = documented_ids()
    named = {ident for case in CASES for ident in case.differs}
    assert len(documented) >= 3
    assert named - documented.keys() == set(), "a case names an id docs/servers.md lacks"
    assert documented.keys() - named == set(), "a documented difference no case exercises"


def test_every_documented_difference_shows_on_some_server(tally: Tally) -> None:
    """After the comparisons (this test runs after them, in file order), each row was seen."""
    expected = {
        param.id for param in params() if not any(mark.name == "xfail" for mark in param.marks)
    }
    if tally.passed != expected:
        pytest.skip("only a part of the comparisons ran (or some failed): nothing to tally")
    unseen = documented_ids().keys() - tally.shown.keys()
    assert unseen == set(), f"documented, but no case shows it on any server: {unseen}"
