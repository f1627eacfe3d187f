"""In-band token refresh under attack: real uvicorn on 127.0.0.1, the real client, ES256.

Two findings of an attack review. A refresh was consumed before any
``MessageRate`` counted it and cost a signature check each time (one client
sent 71,500 ES256 refreshes past ``MessageRate("5/second")``; another's echo
went from 6 ms to 10 s). And a refresh could switch principals: to another
user's token when the first had no ``sub``, or to the same ``sub`` from
another issuer. Every test counts the signature checks the server made.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import EC_KEY, mint
from tests.support.servers import ServerThread, serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.base import Rule

pytestmark = pytest.mark.e2e

ISSUER_A = "https://a.example"
ISSUER_B = "https://b.example"


def es256(sub: str | None = "alice", exp_in: float | None = 3600, **claims: Any) -> str:
    return mint(sub, key=EC_KEY, alg="ES256", exp_in=exp_in, **claims)


def refresh(token: str) -> str:
    return json.dumps({"type": "auth.refresh", "token": token})


def jwt_rule(**options: Any) -> rules.JWTAuth:
    options.setdefault("token", rules.from_query("token"))
    return rules.JWTAuth(EC_KEY, algorithms=["ES256"], **options)


class Verifications:
    """Counts the signature checks a JWTAuth makes (each ``decode`` is one)."""

    def __init__(self, rule: rules.JWTAuth) -> None:
        self.count = 0
        decode = rule.decode

        def counted(token: str, key: Any) -> Any:
            self.count += 1
            return decode(token, key)

        rule.decode = counted  # type: ignore[method-assign]


@contextmanager
def guarded(
    *extra: Rule, **jwt_options: Any
) -> Iterator[tuple[ServerThread, Guard, Verifications]]:
    rule = jwt_rule(**jwt_options)
    verifications = Verifications(rule)
    guard = Guard(rules=[rule, *extra], paths=["/ws"])
    with serve(WSGuardMiddleware(whoami, guard=guard)) as thread:
        yield thread, guard, verifications


def open_ws(thread: ServerThread, token: str) -> Any:
    return connect(f"{thread.url}/ws?token={token}", proxy=None, max_queue=None)


async def closed_with(ws: ClientConnection, timeout: float = 10.0) -> tuple[int, str]:
    """Read until the server's close frame; its code and reason."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        received = exc.rcvd
    assert received is not None, "the server dropped TCP without a close frame"
    return received.code, received.reason


async def send_all(ws: ClientConnection, frames: list[str]) -> None:
    """Send every frame without waiting for replies; stop once the server has closed.

    Yields to the loop after each frame: the client's ``send`` only suspends
    when its buffer is full, so without it one flooding client holds this
    process's loop and a bystander's timing would measure the client, not the
    server.
    """
    try:
        for frame in frames:
            await ws.send(frame)
            await asyncio.sleep(0)
    except ConnectionClosed:
        pass


async def report(ws: ClientConnection) -> dict[str, Any]:
    """The identity the app sees (whoami answers the first message), then the echo."""
    await ws.send("hi")
    who: dict[str, Any] = json.loads(await ws.recv())
    assert await ws.recv() == "hi"
    return who


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# -- finding 6: refreshes are rate-limited before their signature is checked ------------

FLOOD_CASES = {
    # name: (rules besides JWTAuth, JWTAuth options, refreshes allowed, close reason)
    "message-rate": (
        lambda: [rules.MessageRate("5/second")],
        {"refresh_rate": "100/second"},
        5,
        "rate_limited; retry-after=1",
    ),
    "several-rates": (
        lambda: [rules.MessageRate(["10/second", "4/minute"])],
        {"refresh_rate": "100/second"},
        4,
        "rate_limited; retry-after=60",
    ),
    "per-user-rate": (
        lambda: [rules.MessageRate("4/second", key=rules.by_user)],
        {"refresh_rate": "100/second"},
        4,
        "rate_limited; retry-after=1",
    ),
    "refresh-rate-default": (
        lambda: [rules.MessageRate("5/second")],
        {},
        3,
        "refresh_rate_limited; retry-after=60",
    ),
    "refresh-rate-own": (
        lambda: [rules.MessageRate("50/second")],
        {"refresh_rate": "2/second; 10/minute"},
        2,
        "refresh_rate_limited; retry-after=1",
    ),
}


@pytest.mark.parametrize("case", FLOOD_CASES.values(), ids=FLOOD_CASES.keys())
async def test_a_refresh_flood_is_closed_after_the_allowed_count_with_bounded_crypto(
    case: tuple[Callable[[], list[Rule]], dict[str, Any], int, str],
) -> None:
    make_rules, options, allowed, reason = case
    # Every refresh is valid and moves exp on: only a limit can stop the flood.
    # The handshake token is minted first: exp is in whole seconds, so one
    # minted after the flood, across a second boundary, could equal the first
    # refresh's exp and make it token_stale.
    token = es256()
    flood = [refresh(es256(exp_in=3600 + i)) for i in range(1, 201)]
    with guarded(*make_rules(), **options) as (thread, guard, verifications):
        async with open_ws(thread, token) as ws:
            await send_all(ws, flood)
            assert await closed_with(ws) == (1008, reason)
        assert verifications.count == 1 + allowed  # the handshake and the allowed refreshes
        await eventually(lambda: guard.metrics.snapshot().active_connections == 0)
        assert guard.metrics.snapshot().closes_by_rule == {reason.partition(";")[0]: 1}


async def test_refreshes_and_app_messages_share_the_message_rate() -> None:
    with guarded(rules.MessageRate("5/second"), refresh_rate="100/second") as (thread, _, checks):
        async with open_ws(thread, es256()) as ws:
            await report(ws)  # message 1 (the app answers with who + echo)
            await ws.send(refresh(es256(exp_in=3601)))  # 2
            await ws.send(refresh(es256(exp_in=3602)))  # 3
            await ws.send("three")  # 4
            assert await ws.recv() == "three"
            await ws.send("four")  # 5
            assert await ws.recv() == "four"
            await ws.send(refresh(es256(exp_in=3603)))  # 6: refused before its signature check
            assert await closed_with(ws) == (1008, "rate_limited; retry-after=1")
        assert checks.count == 3


async def test_a_bystanders_echo_stays_fast_during_a_refresh_flood() -> None:
    """Ten connections flood valid refreshes while another client times its echo."""
    token = es256()
    flood = [refresh(es256(exp_in=3600 + i)) for i in range(1, 501)]
    # The bystander pings far below the rate; attackers meet the default refresh_rate.
    with guarded(rules.MessageRate("200/second")) as (thread, guard, verifications):
        async with open_ws(thread, token) as bystander:
            await report(bystander)
            attackers = [await open_ws(thread, token).__aenter__() for _ in range(10)]
            latencies: list[float] = []

            async def ping() -> None:
                for i in range(50):
                    start = time.perf_counter()
                    await bystander.send(f"ping {i}")
                    assert await bystander.recv() == f"ping {i}"
                    latencies.append(time.perf_counter() - start)
                    await asyncio.sleep(0.005)

            async def attack(ws: ClientConnection) -> tuple[int, str]:
                await send_all(ws, flood)
                return await closed_with(ws)

            results = await asyncio.gather(ping(), *(attack(ws) for ws in attackers))
            for ws in attackers:
                await ws.close()
        # Each attacker got three refreshes (the default refresh_rate) and its close.
        assert results[1:] == [(1008, "refresh_rate_limited; retry-after=60")] * 10
        assert verifications.count == 1 + 10 * (1 + 3)
        await eventually(lambda: guard.metrics.snapshot().active_connections == 0)
    median, worst = statistics.median(latencies), max(latencies)
    print(
        f"bystander echo during the flood: median {median * 1e3:.1f} ms, max {worst * 1e3:.1f} ms"
    )
    assert worst < 0.5, f"a bystander's echo took {worst * 1e3:.0f} ms"


# -- a refresh must move the deadline forward ------------------------------------------


@pytest.mark.parametrize("earlier_by", [0, 60], ids=["same-exp", "earlier-exp"])
async def test_a_refresh_that_does_not_extend_the_session_is_stale(earlier_by: int) -> None:
    first = es256(exp_in=3600)
    with guarded() as (thread, guard, verifications):
        async with open_ws(thread, first) as ws:
            await report(ws)
            await ws.send(refresh(es256(exp_in=None, exp=_exp(first) - earlier_by)))
            assert await closed_with(ws) == (1008, "token_stale")
        assert verifications.count == 2  # refused after its signature check, not before
        assert guard.metrics.snapshot().closes_by_rule == {"token_stale": 1}


def _payload(token: str) -> str:
    import base64

    body = token.split(".")[1]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


def _exp(token: str) -> int:
    return int(json.loads(_payload(token))["exp"])


# -- finding 7: a refresh never switches principals -------------------------------------


async def test_a_refresh_to_another_users_token_is_invalid() -> None:
    with guarded() as (thread, _, _checks):
        async with open_ws(thread, es256("alice")) as ws:
            assert (await report(ws))["sub"] == "alice"
            await ws.send(refresh(es256("mallory", exp_in=7200)))
            assert await closed_with(ws) == (1008, "token_invalid")


async def test_the_same_sub_from_another_issuer_is_refused() -> None:
    with guarded(issuer=[ISSUER_A, ISSUER_B]) as (thread, guard, _):
        async with open_ws(thread, es256("alice", iss=ISSUER_A)) as ws:
            await report(ws)
            # The same issuer, later exp: accepted (the control).
            await ws.send(refresh(es256("alice", exp_in=7200, iss=ISSUER_A, gen=2)))
            await ws.send(refresh(es256("alice", exp_in=9000, iss=ISSUER_B)))
            assert await closed_with(ws) == (1008, "token_invalid")
        assert guard.metrics.snapshot().closes_by_rule == {"token_invalid": 1}


@pytest.mark.parametrize("refresh_sub", [None, "alice"], ids=["no-sub", "a-sub"])
async def test_a_connection_without_a_sub_cannot_refresh(refresh_sub: str | None) -> None:
    with guarded() as (thread, _, _checks):
        async with open_ws(thread, es256(None)) as ws:
            assert (await report(ws))["sub"] is None  # admitted: a handshake needs no sub
            await ws.send(refresh(es256(refresh_sub, exp_in=7200)))
            assert await closed_with(ws) == (1008, "token_invalid")


async def test_by_user_keys_the_same_sub_from_two_issuers_apart() -> None:
    cap = rules.MaxConnectionsPerKey(1, key=rules.by_user)
    with guarded(cap, issuer=[ISSUER_A, ISSUER_B]) as (thread, _, _checks):
        async with (
            open_ws(thread, es256("alice", iss=ISSUER_A)) as at_a,
            open_ws(thread, es256("alice", iss=ISSUER_B)) as at_b,
        ):
            assert (await report(at_a))["claims"]["iss"] == ISSUER_A
            assert (await report(at_b))["claims"]["iss"] == ISSUER_B
            assert cap.count(f'["{ISSUER_A}","alice"]') == 1
            assert cap.count(f'["{ISSUER_B}","alice"]') == 1
            async with open_ws(thread, es256("alice", iss=ISSUER_A)) as again:
                assert await closed_with(again) == (1008, "too_many_connections")
