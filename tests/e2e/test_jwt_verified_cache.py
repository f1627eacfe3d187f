"""JWTAuth(verified_cache=N) end to end: a cached token that expired is refused as before.

Real uvicorn on 127.0.0.1 and the real ``websockets`` client; one server
with the cache, one without, given the same token twice, the second time
after its ``exp``.
"""

from __future__ import annotations

import asyncio
import time

import jwt
import pytest
from websockets.asyncio.client import connect

from tests.e2e.test_jwt import closed_with, report
from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import SECRET, mint
from tests.support.servers import serve
from ws_guard import Guard, WSGuardMiddleware, rules

pytestmark = pytest.mark.e2e


def guard(cache: int) -> Guard:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], verified_cache=cache)
    return Guard(rules=[rule], paths=["/ws"])


async def test_a_cached_token_past_exp_closes_as_without_the_cache() -> None:
    cached, uncached = guard(10), guard(0)
    token = mint("alice", exp_in=2)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    headers = {"Authorization": f"Bearer {token}"}
    with (
        serve(WSGuardMiddleware(whoami, guard=cached)) as with_cache,
        serve(WSGuardMiddleware(whoami, guard=uncached)) as without,
    ):
        for thread in (with_cache, without):
            async with connect(f"{thread.url}/ws", proxy=None, additional_headers=headers) as ws:
                assert (await report(ws))["sub"] == "alice"
        # Past exp on the wall clock (PyJWT's and the guard's alike): a little
        # over two seconds, polled on the condition itself.
        give_up = time.monotonic() + 3.5
        while time.time() < exp + 0.05:
            assert time.monotonic() < give_up
            await asyncio.sleep(0.02)
        closes = []
        for thread in (with_cache, without):
            async with connect(f"{thread.url}/ws", proxy=None, additional_headers=headers) as ws:
                code, reason, _ = await closed_with(ws)
                closes.append((code, reason))
    assert closes == [(1008, "token_expired"), (1008, "token_expired")]
    rule = cached.rules[0]
    assert isinstance(rule, rules.JWTAuth)
    assert rule.verifier.cache is not None
    assert (rule.verifier.cache.hits, rule.verifier.cache.misses) == (1, 1)  # answered from it
    for g in (cached, uncached):
        snap = g.metrics.snapshot()
        assert snap.closes_by_rule.get("token_expired") == 1
