"""Jittered retry hints keep their spread on the wire.

A load gauge hints ``retry_min * (1 + draw)`` seconds (1-2 s by default) and
a drain ``retry_after * (1 + draw)``. Rounded up to whole seconds every shed
client read ``retry-after=2`` (10,000 of 10,000 draws), so a reconnect herd
came back in lockstep. The close reason now carries the hint to a tenth of a
second (rounded up: never early), and the integer HTTP ``Retry-After`` of a
``reject="http"`` denial is rounded down or up at random, up with probability
equal to the fraction. A rate limit's hint (when its window reopens) has no
jitter and stays whole seconds, rounded up.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.servers import serve
from ws_guard import Close, Guard, WSGuardMiddleware, load
from ws_guard._core.decisions import format_retry_after, http_retry_after
from ws_guard._core.drain import Drain
from ws_guard.types import Receive, Scope, Send

HINT = re.compile(r"overloaded; retry-after=([0-9]+(?:\.[0-9])?)")


class Draws(random.Random):
    """A random source that returns these draws in turn (exact hints).

    The draws come as one tuple: on Python 3.10 ``random.Random.__new__``
    refuses more than one argument and seeds with the one it gets, whatever
    the subclass's ``__init__``, so that argument must be hashable.
    """

    def __init__(self, draws: tuple[float, ...]) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def busy_guard(source: random.Random, **kwargs: object) -> tuple[Guard, load.Gauge]:
    gauge = load.Gauge(lambda: 1.0, 1.0, name="busy")
    return Guard(load=[gauge], random_source=source, **kwargs), gauge  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1.0, "1"),
        (1.0001, "1.1"),  # up: never early
        (1.4, "1.4"),  # 14.000000000000002 tenths in floats: still 1.4
        (1.41, "1.5"),
        (1.99, "2"),
        (12.25, "12.3"),
        (0.0, "0"),
        (-1.0, "0"),
    ],
)
def test_a_jittered_hint_goes_out_to_a_tenth_rounded_up(seconds: float, text: str) -> None:
    assert format_retry_after(seconds, tenths=True) == text


def test_a_rate_hint_stays_whole_seconds_rounded_up() -> None:
    assert format_retry_after(1.4) == "2"
    assert Close(1008, "rate_limited", "rate_limited", 1.4).wire_reason == (
        "rate_limited; retry-after=2"
    )


async def test_gauge_hints_carry_each_draw() -> None:
    guard, gauge = busy_guard(Draws((0.0, 0.05, 0.35, 0.7, 0.99)))
    await guard.startup()
    try:
        assert gauge.observe(0.0)
        reasons = [gauge.overload_close(0.0).wire_reason for _ in range(5)]
    finally:
        await guard.shutdown()
    assert reasons == [
        "overloaded; retry-after=1",
        "overloaded; retry-after=1.1",
        "overloaded; retry-after=1.4",
        "overloaded; retry-after=1.7",
        "overloaded; retry-after=2",
    ]


def test_drain_hints_with_the_default_carry_each_draw() -> None:
    guard = Guard(random_source=Draws((0.0, 0.25, 0.6, 0.95)))
    drain = Drain(guard, window=0.0, code=1012, retry_after=1.0, grace=0.0)
    reasons = [drain.close_for_one().wire_reason for _ in range(4)]
    assert reasons == [
        "restarting; retry-after=1",
        "restarting; retry-after=1.3",
        "restarting; retry-after=1.6",
        "restarting; retry-after=2",
    ]


@pytest.mark.parametrize(
    ("seconds", "draw", "header"),
    [
        (1.4, 0.39, "2"),  # draw below the fraction: up
        (1.4, 0.4, "1"),  # at or above it: down
        (1.4, 0.0, "2"),
        (2.0, 0.0, "2"),  # whole: never moved
        (2.0, 0.999, "2"),
        (0.5, 0.7, "0"),
    ],
)
def test_the_http_retry_after_is_rounded_at_random_by_the_fraction(
    seconds: float, draw: float, header: str
) -> None:
    assert http_retry_after(seconds, Draws((draw,))) == header


def test_the_http_retry_after_keeps_the_mean() -> None:
    rng = random.Random(2026)
    values = Counter(http_retry_after(1.4, rng) for _ in range(10_000))
    assert set(values) == {"1", "2"}
    assert 3_800 <= values["2"] <= 4_200  # probability 0.4


def test_http_denials_spread_jittered_hints_and_never_shorten_rate_hints() -> None:
    guard = Guard(random_source=Draws((0.3, 0.5)))
    jittered = Close(1013, "overloaded", "overloaded", 1.4, jittered=True)
    assert guard.reporter.http_denial(jittered)[1][-1] == (b"retry-after", b"2")
    assert guard.reporter.http_denial(jittered)[1][-1] == (b"retry-after", b"1")
    rate = Close(1008, "rate_limited", "rate_limited", 1.1)
    assert guard.reporter.http_denial(rate) == (
        429,
        [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"2")],
    )


# -- end to end: 40 shed clients ------------------------------------------------


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] == "websocket.receive":
        pass


async def shed_reason(url: str) -> tuple[int, str]:
    """The close code and reason a shed client reads."""
    async with connect(url, open_timeout=5, close_timeout=5) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    rcvd = closed.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (0, "")


async def shed_header(url: str) -> tuple[int, str]:
    """The HTTP status and ``Retry-After`` a refused client reads."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, open_timeout=5, close_timeout=5):
            pass
    response = refused.value.response
    return response.status_code, str(response.headers["Retry-After"])


@pytest.mark.e2e
async def test_forty_shed_clients_do_not_all_read_the_same_hint() -> None:
    guard, _ = busy_guard(random.Random(40))
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        reasons = [await shed_reason(server.url + "/ws") for _ in range(40)]
    hints = []
    for code, reason in reasons:
        assert code == 1013
        match = HINT.fullmatch(reason)
        assert match is not None, reason
        hints.append(float(match.group(1)))
    # 1-2 s at first; the base grows by 0.5 s per second the overload lasts.
    assert all(1.0 <= h <= 60.0 for h in hints)
    assert len(set(hints)) >= 5  # ten possible values; before, all 40 read 2
    assert guard.metrics.snapshot().closes_by_code == {1013: 40}


@pytest.mark.e2e
async def test_forty_http_denials_do_not_all_send_the_same_retry_after() -> None:
    guard, _ = busy_guard(random.Random(40), reject="http")
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        headers = Counter([await shed_header(server.url + "/ws") for _ in range(40)])
    assert {status for status, _ in headers} == {503}
    seconds = [int(value) for _, value in headers]
    # A 1-2 s draw at first, randomly rounded to 1 or 2; the base grows by 0.5 s
    # per second the overload lasts, so a slow run (coverage) may also see 3.
    assert all(1 <= s <= 60 for s in seconds)
    assert {1, 2} <= set(seconds)  # before, all 40 read 2
