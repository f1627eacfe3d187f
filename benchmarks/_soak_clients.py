"""The soak benchmark's clients: a pool of tasks churning short-lived connections.

Each task has its own source address in 127.0.0.0/8 (so the per-address
connect rate applies per task, and no single address runs out of ephemeral
ports) and its own few users. It loops over *episodes* until the run ends;
an episode is one behaviour, picked with fixed weights from the task's own
seeded random source, and opens one or more connections. Every connection's
close (code and reason slug, as the ``websockets`` client saw it) is counted
against what the behaviour expects; a 1006 (no close frame) is looked up on
the server (``/peer``) to see what the server side sent for that connection.

A task honours 1013: it waits the server's ``retry-after`` hint (capped,
jittered) before its next episode, as ws_guard's reconnect policy would.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import random
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from _soak_app import (
    CONNECT_RATE_LIMIT,
    CONNECT_RATE_WINDOW,
    CONNECTION_RATE_LIMIT,
    FORBIDDEN,
    MAX_MESSAGE_BYTES,
    SECRET,
    USER_CAP,
    USER_RATE_LIMIT,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ws_guard.client import reason_slug, retry_after_hint

OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
#: No episode body may take longer than this (idle-until-expiry is the longest, ~4 s).
EPISODE_TIMEOUT = 20.0
#: 1006s looked up on the server, at most (each costs an HTTP request).
MAX_LOOKUPS = 300
USERS_PER_TASK = 8
#: ``1013 overloaded`` may answer any handshake: it is expected everywhere.
SHED = "1013 overloaded"

#: Behaviour -> (weight, close labels it expects). A label is "<code> <reason slug>".
BEHAVIOURS: dict[str, tuple[int, frozenset[str]]] = {
    "echo": (30, frozenset({"1000"})),
    "app_close": (4, frozenset({"1000 bye"})),
    "app_crash": (2, frozenset({"1011 internal_error"})),
    "oversize": (6, frozenset({"1009 message_too_big"})),
    "binary": (6, frozenset({"1003 unsupported_data"})),
    "forbidden": (6, frozenset({"1008 content:no_forbidden"})),
    "flood": (6, frozenset({"1008 rate_limited"})),
    "user_flood": (3, frozenset({"1000", "1008 rate_limited"})),
    "cap": (3, frozenset({"1000", "1008 too_many_connections"})),
    "expire": (8, frozenset({"1008 token_expired"})),
    "refresh": (6, frozenset({"1000"})),
    "bad_token": (
        4,
        frozenset({"1008 token_invalid", "1008 token_missing", "1008 token_expired"}),
    ),
    "hammer": (1, frozenset({"1000", "1008 connect_rate_limited"})),
}

_ALPHABET = string.ascii_letters + string.digits + " .,"
_BLOB = "".join(random.Random(7).choices(_ALPHABET, k=65536))  # no FORBIDDEN, no "bye"


@dataclass
class Tally:
    """Everything the clients observed, shared by all tasks (one event loop)."""

    attempts: int = 0
    opened: int = 0
    codes: collections.Counter[int] = field(default_factory=collections.Counter)
    outcomes: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    episodes: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Episodes whose connections together missed what the episode is for.
    misses: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Exceptions the client code did not expect (a bug in the client, or a surprise).
    client_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    echo_mismatches: int = 0
    backoffs: int = 0
    backoff_seconds: float = 0.0
    #: One entry per 1006 (up to MAX_LOOKUPS), with what the server side did.
    abnormal: list[dict[str, Any]] = field(default_factory=list)
    abnormal_unlooked: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "opened": self.opened,
            "codes": {str(k): v for k, v in sorted(self.codes.items())},
            "outcomes": {b: dict(c) for b, c in sorted(self.outcomes.items())},
            "unexpected": dict(self.unexpected),
            "failures": dict(self.failures),
            "episodes": dict(self.episodes),
            "misses": dict(self.misses),
            "client_errors": dict(self.client_errors),
            "echo_mismatches": self.echo_mismatches,
            "backoffs": self.backoffs,
            "backoff_seconds": round(self.backoff_seconds, 1),
            "abnormal": self.abnormal,
            "abnormal_unlooked": self.abnormal_unlooked,
        }


def token(subject: str, lifetime: float, secret: str = SECRET) -> str:
    exp = math.ceil(time.time() + lifetime)
    return jwt.encode({"sub": subject, "exp": exp}, secret, algorithm="HS256")


async def http_get_json(host: str, port: int, target: str, timeout: float = 5.0) -> Any:
    """One HTTP/1.0 GET on loopback; the body parsed as JSON.

    Raises ``OSError`` (no connection, not 200), ``asyncio.TimeoutError`` after
    *timeout* seconds (the builtin ``TimeoutError`` only from Python 3.11 on),
    ``ValueError`` (not JSON).
    """

    async def fetch() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {target} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            return await reader.read()
        finally:
            writer.close()

    # asyncio.wait_for, not asyncio.timeout: the latter is Python 3.11+.
    raw = await asyncio.wait_for(fetch(), timeout)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        raise OSError(f"GET {target}: {head[:40]!r}")
    return json.loads(body)


Body = Callable[[ClientConnection], Awaitable[None]]


class Pool:
    """``concurrency`` tasks churning connections until ``stop_at``."""

    def __init__(
        self,
        url: str,
        *,
        concurrency: int,
        seed: int,
        stop_at: float,
        think: float,
        max_backoff: float,
        ramp: float,
    ) -> None:
        self.url = url
        host_port = url.split("//", 1)[1].split("/", 1)[0]
        host, _, port = host_port.partition(":")
        self.host, self.port = host, int(port)
        self.concurrency = concurrency
        self.seed = seed
        self.stop_at = stop_at
        self.think = think
        self.max_backoff = max_backoff
        self.ramp = ramp
        self.tally = Tally()
        self._hammer_ips = 0
        names = list(BEHAVIOURS)
        self._names = names
        self._weights = [BEHAVIOURS[n][0] for n in names]

    async def run(self, grace: float = EPISODE_TIMEOUT + OPEN_TIMEOUT + CLOSE_TIMEOUT) -> int:
        """Run every task until ``stop_at``; returns how many had to be cancelled."""
        tasks = [asyncio.create_task(self._task(i)) for i in range(self.concurrency)]
        left = max(0.0, self.stop_at - time.monotonic()) + grace
        done, pending = await asyncio.wait(tasks, timeout=left)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a bug in the client code must not pass silently
        return len(pending)

    # -- one task --------------------------------------------------------------
    async def _task(self, i: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + i)
        ip = f"127.0.{1 + i // 250}.{1 + i % 250}"
        await asyncio.sleep(self.ramp * i / self.concurrency)
        episode = 0
        while time.monotonic() < self.stop_at:
            name = rng.choices(self._names, self._weights)[0]
            user = f"t{i}-u{episode % USERS_PER_TASK}"
            labels = await getattr(self, f"_{name}")(rng, ip, user, f"t{i}-e{episode}")
            self.tally.episodes[name] += 1
            episode += 1
            shed = [label for label in labels if label.startswith(SHED)]
            if shed:
                hint = retry_after_hint(shed[0].partition("|")[2]) or 1.0
                delay = min(hint, self.max_backoff) * rng.uniform(0.5, 1.0)
                self.tally.backoffs += 1
                self.tally.backoff_seconds += delay
                await asyncio.sleep(delay)
            await asyncio.sleep(rng.uniform(0.05, self.think))

    # -- one connection ----------------------------------------------------------
    async def _connection(
        self, behaviour: str, ip: str, query_token: str | None, body: Body | None
    ) -> str:
        """Open, run *body*, close; returns ``"<code> <slug>|<reason>"`` (or a failure)."""
        tally = self.tally
        tally.attempts += 1
        url = self.url if query_token is None else f"{self.url}?token={query_token}"
        try:
            ws = await connect(
                url,
                local_addr=(ip, 0),
                proxy=None,
                compression=None,
                open_timeout=OPEN_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
                ping_interval=None,
                user_agent_header=None,
            )
        except InvalidStatus as exc:
            tally.failures[f"{behaviour}: HTTP {exc.response.status_code}"] += 1
            return "failed"
        except Exception as exc:
            tally.failures[f"{behaviour}: {type(exc).__name__}"] += 1
            return "failed"
        tally.opened += 1
        local = ws.local_address
        phase = "body"
        error: str | None = None
        try:
            if body is not None:
                await asyncio.wait_for(body(ws), EPISODE_TIMEOUT)
            phase = "client close"
        except ConnectionClosed:
            pass
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            error = "episode timed out"
        except OSError as exc:
            error = type(exc).__name__
        except Exception as exc:  # a client-side surprise: counted, the soak goes on
            error = f"client error {type(exc).__name__}"
            tally.client_errors[f"{behaviour}: {type(exc).__name__}: {exc}"[:160]] += 1
        with contextlib.suppress(OSError):
            await ws.close()
        code = ws.close_code or 1006
        reason = ws.close_reason or ""
        label = f"{code} {reason_slug(reason)}".strip()
        tally.codes[code] += 1
        tally.outcomes[behaviour][label] += 1
        if label not in BEHAVIOURS[behaviour][1] and label != SHED:
            tally.unexpected[f"{behaviour}: {label}" + (f" ({error})" if error else "")] += 1
        if code == 1006:
            await self._attribute(behaviour, phase, error, local)
        return f"{label}|{reason}"

    async def _attribute(self, behaviour: str, phase: str, error: str | None, local: Any) -> None:
        """Ask the server what it sent on this connection (it may still be finishing)."""
        tally = self.tally
        if len(tally.abnormal) >= MAX_LOOKUPS:
            tally.abnormal_unlooked += 1
            return
        addr = f"{local[0]}:{local[1]}"
        entry: dict[str, Any] = {"behaviour": behaviour, "phase": phase, "error": error}
        entry["peer"] = addr
        record = None
        for _ in range(10):
            try:
                answer = await http_get_json(self.host, self.port, f"/peer?addr={addr}")
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                entry["lookup_error"] = type(exc).__name__
                break
            record = answer["record"]
            if record is None or record.get("ended"):
                break
            await asyncio.sleep(0.2)
        entry["server"] = record
        tally.abnormal.append(entry)

    # -- helpers -------------------------------------------------------------------
    @staticmethod
    def _text(rng: random.Random, low: int = 8, high: int = 1500) -> str:
        size = rng.randint(low, high)
        start = rng.randrange(0, len(_BLOB) - size)
        return _BLOB[start : start + size]

    async def _roundtrip(self, ws: ClientConnection, rng: random.Random) -> None:
        text = self._text(rng)
        await ws.send(text)
        reply = await ws.recv()
        if reply != text:
            self.tally.echo_mismatches += 1

    async def _drain(self, ws: ClientConnection) -> None:
        """Read until the server closes (ConnectionClosed ends the body)."""
        while True:
            await ws.recv()

    # -- behaviours: each returns the labels of its connections ------------------
    async def _echo(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        async def body(ws: ClientConnection) -> None:
            for _ in range(rng.randint(3, 12)):
                await self._roundtrip(ws, rng)
            await asyncio.sleep(rng.uniform(0.0, 0.5))

        return [await self._connection("echo", ip, token(user, 300), body)]

    async def _app_close(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        async def body(ws: ClientConnection) -> None:
            await self._roundtrip(ws, rng)
            await ws.send("bye")
            await self._drain(ws)

        return [await self._connection("app_close", ip, token(user, 300), body)]

    async def _app_crash(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        async def body(ws: ClientConnection) -> None:
            await self._roundtrip(ws, rng)
            await ws.send("crash")
            await self._drain(ws)

        return [await self._connection("app_crash", ip, token(user, 300), body)]

    async def _oversize(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        async def body(ws: ClientConnection) -> None:
            for _ in range(rng.randint(0, 2)):
                await self._roundtrip(ws, rng)
            await ws.send("x" * (MAX_MESSAGE_BYTES + rng.randint(1, 4096)))
            await self._drain(ws)

        return [await self._connection("oversize", ip, token(user, 300), body)]

    async def _binary(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        async def body(ws: ClientConnection) -> None:
            await self._roundtrip(ws, rng)
            await ws.send(self._text(rng, 1, 200).encode())
            await self._drain(ws)

        return [await self._connection("binary", ip, token(user, 300), body)]

    async def _forbidden(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        async def body(ws: ClientConnection) -> None:
            await self._roundtrip(ws, rng)
            await ws.send(f"{self._text(rng, 1, 100)} {FORBIDDEN} {self._text(rng, 1, 100)}")
            await self._drain(ws)

        return [await self._connection("forbidden", ip, token(user, 300), body)]

    async def _flood(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        async def body(ws: ClientConnection) -> None:
            async def send_all() -> None:
                for _ in range(3 * CONNECTION_RATE_LIMIT):
                    await ws.send(self._text(rng, 8, 64))

            # Read while sending, as real clients do: the close frame must not
            # sit behind unread echoes.
            await asyncio.gather(send_all(), self._drain(ws))

        return [await self._connection("flood", ip, token(user, 300), body)]

    async def _expire(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        async def body(ws: ClientConnection) -> None:
            await self._drain(ws)  # idle until the guard closes at expiry

        return [await self._connection("expire", ip, token(user, rng.uniform(1.0, 3.0)), body)]

    async def _refresh(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        lifetime = rng.uniform(1.5, 3.0)
        first = token(user, lifetime)
        expires = jwt.decode(first, options={"verify_signature": False})["exp"]

        async def body(ws: ClientConnection) -> None:
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            refreshed = token(user, 300)
            await ws.send(json.dumps({"type": "auth.refresh", "token": refreshed}))
            # Outlive the first token, then prove the connection still works.
            await asyncio.sleep(max(0.0, expires + 0.5 - time.time()))
            await self._roundtrip(ws, rng)

        return [await self._connection("refresh", ip, first, body)]

    async def _bad_token(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        kind = rng.randrange(4)
        query_token: str | None
        if kind == 0:
            query_token = token(user, 300, secret=SECRET[::-1])  # signed with another key
        elif kind == 1:
            query_token = "not.a.jwt"
        elif kind == 2:
            query_token = None
        else:
            query_token = jwt.encode({"sub": user, "exp": int(time.time()) - 5}, SECRET)

        async def body(ws: ClientConnection) -> None:
            await self._drain(ws)

        return [await self._connection("bad_token", ip, query_token, body)]

    async def _together(self, name: str, n: int, ip: str, user: str, body: Body) -> list[str]:
        """*n* connections of one user, each starting *body* once all n have opened."""
        arrived = 0
        everyone = asyncio.Event()

        def arrive() -> None:
            nonlocal arrived
            arrived += 1
            if arrived == n:
                everyone.set()

        async def gated(ws: ClientConnection) -> None:
            arrive()
            await asyncio.wait_for(everyone.wait(), OPEN_TIMEOUT)
            await body(ws)

        async def one() -> str:
            label = await self._connection(name, ip, token(user, 300), gated)
            if label == "failed":
                arrive()  # do not hold the others back
            return label

        return list(await asyncio.gather(*(one() for _ in range(n))))

    async def _user_flood(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        # Under the per-connection limit, together well over the per-user one.
        per_connection = CONNECTION_RATE_LIMIT - 2
        if USER_CAP * per_connection <= USER_RATE_LIMIT:
            raise SystemExit("user_flood would not exceed the per-user rate")
        sent: list[float] = []

        async def body(ws: ClientConnection) -> None:
            async def send_all() -> None:
                for _ in range(per_connection):
                    await ws.send(self._text(rng, 8, 64))
                    sent.append(time.monotonic())

            async def read_all() -> None:
                for _ in range(per_connection):
                    await ws.recv()

            await asyncio.gather(send_all(), read_all())

        # A fresh user: its window holds nothing but this episode's messages.
        labels = await self._together("user_flood", USER_CAP, ip, f"uf-{tag}", body)
        limited = any("1008 rate_limited" in label for label in labels)
        # Only when every message went out well within one window must one be refused.
        dense = len(sent) == USER_CAP * per_connection and sent[-1] - sent[0] < 0.8
        if self._clean(labels) and dense and not limited:
            self.tally.misses["user_flood: all messages within the window, none refused"] += 1
        return labels

    async def _cap(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        async def body(ws: ClientConnection) -> None:
            await self._roundtrip(ws, rng)
            await asyncio.sleep(0.3)

        labels = await self._together("cap", USER_CAP + 1, ip, f"cap-{tag}", body)
        refused = sum("too_many_connections" in label for label in labels)
        if self._clean(labels) and refused != 1:
            self.tally.misses[f"cap: {refused} of {USER_CAP + 1} refused, not 1"] += 1
        return labels

    async def _hammer(self, rng: random.Random, ip: str, user: str, tag: str) -> list[str]:
        n = self._hammer_ips = self._hammer_ips + 1
        own_ip = f"127.2.{(n // 250) % 250}.{1 + n % 250}"  # fresh: no earlier attempts
        labels = []
        counted: list[float] = []  # when each attempt ConnectRate saw began
        for _ in range(CONNECT_RATE_LIMIT + 10):
            started = time.monotonic()
            label = await self._connection("hammer", own_ip, token(user, 300), None)
            labels.append(label)
            if label != "failed" and not label.startswith(SHED):
                counted.append(started)
        # Only when limit + 1 attempts fell well within one window must one be refused.
        window = CONNECT_RATE_WINDOW * 0.9
        dense = any(
            later - first < window
            for first, later in zip(counted, counted[CONNECT_RATE_LIMIT:], strict=False)
        )
        if dense and not any("connect_rate_limited" in label for label in labels):
            self.tally.misses["hammer: limit + 1 attempts within the window, none refused"] += 1
        return labels

    @staticmethod
    def _clean(labels: list[str]) -> bool:
        """No shed and no failed handshake: the episode's own expectation applies."""
        return not any(label.startswith(SHED) or label == "failed" for label in labels)
