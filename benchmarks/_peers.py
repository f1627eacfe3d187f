"""Peer limiters the echo benchmark serves beside ws_guard, with the same echo endpoint.

A peer is not a :class:`ws_guard.Guard`: it is the Starlette echo app with
another library's limiter called where that library says to call it. Today:
fastapi-limiter's ``WebSocketRateLimiter`` (0.2, on pyrate-limiter), called
before each echoed message as its README shows, at the same unreached rate
as ws_guard's variants, keyed by its default identifier (client IP and path:
one key for every benchmark connection, like ``rate_ip``).

fastapi-limiter is in the ``bench`` extra; ``peer_fastapi_limiter_redis``
needs ``WS_GUARD_BENCH_REDIS`` as ``rate_user`` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _variants import UNREACHED_RATE


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer app: its description and a factory of the limiter call for one message."""

    description: str
    #: Builds ``limit(websocket)``: an awaitable call made before each echo.
    build: Callable[[], Callable[[Any], Any]]


def _rates() -> list[Any]:
    from pyrate_limiter import Duration, Rate

    amount = int(UNREACHED_RATE.split("/", 1)[0])
    return [Rate(amount, Duration.MINUTE)]


def _fastapi_limiter_memory() -> Callable[[Any], Any]:
    from fastapi_limiter.depends import WebSocketRateLimiter
    from pyrate_limiter import Limiter

    return WebSocketRateLimiter(limiter=Limiter(_rates()))


def _fastapi_limiter_redis() -> Callable[[Any], Any]:
    from fastapi_limiter.depends import WebSocketRateLimiter
    from pyrate_limiter import Limiter, RedisBucket
    from redis.asyncio import Redis

    url = os.environ.get("WS_GUARD_BENCH_REDIS")
    if not url:
        raise SystemExit("the Redis peer needs WS_GUARD_BENCH_REDIS=redis://host:port/db")
    state: dict[str, WebSocketRateLimiter] = {}

    async def limit(websocket: Any) -> Any:
        # RedisBucket.init with an async client is a coroutine: made in the
        # server's loop, on the first message.
        limiter = state.get("limiter")
        if limiter is None:
            bucket = await RedisBucket.init(_rates(), Redis.from_url(url), "ws_guard_bench_peer")
            limiter = state["limiter"] = WebSocketRateLimiter(limiter=Limiter(bucket))
        return await limiter(websocket)

    return limit


PEERS: dict[str, Peer] = {
    "peer_fastapi_limiter": Peer(
        f"fastapi-limiter WebSocketRateLimiter({UNREACHED_RATE!r}) before each echo, "
        "in memory (pyrate-limiter InMemoryBucket), keyed by client IP and path",
        _fastapi_limiter_memory,
    ),
    "peer_fastapi_limiter_redis": Peer(
        f"fastapi-limiter WebSocketRateLimiter({UNREACHED_RATE!r}) before each echo, "
        "on Redis (pyrate-limiter RedisBucket, WS_GUARD_BENCH_REDIS)",
        _fastapi_limiter_redis,
    ),
}
