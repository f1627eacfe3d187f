"""Guard namespaces: independent guards keep separate counters, guards built alike share.

Two guards in one app (``/chat`` and ``/admin``) on one real redis-server,
served by real uvicorn, each with ``MaxConnectionsPerKey(1)``: a socket on
one never uses up the other's cap, with Redis as in memory. Guards built
alike (as the workers of one app build them, here in two server threads and
in a subprocess) or given the same ``namespace`` share.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.apps import echo
from tests.support.paths import SERVER_PATH
from tests.support.rate_helpers import HeaderSubject, read_until_closed
from tests.support.redis_server import RedisServer
from tests.support.servers import serve
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.rules.keys import KeyFunc

KEYS = [pytest.param(rules.by_user, id="by_user"), pytest.param(rules.by_ip, id="by_ip")]


def capped(storage: str, path: str, key: KeyFunc, **options: Any) -> Guard:
    return Guard(
        rules=[HeaderSubject(), rules.MaxConnectionsPerKey(1, key=key)],
        storage=storage,
        paths=[path],
        **options,
    )


def two_guard_app(chat: Guard, admin: Guard) -> Any:
    return WSGuardMiddleware(WSGuardMiddleware(echo, guard=admin), guard=chat)


async def opened(url: str) -> ClientConnection:
    ws = await connect(url, additional_headers={"x-user": "alice"})
    await ws.send("hi")
    assert await ws.recv() == "hi"
    return ws


async def refused(url: str) -> tuple[int, str]:
    async with connect(url, additional_headers={"x-user": "alice"}) as ws:
        received, code, reason = await read_until_closed(ws)
    assert received == []
    return code, reason


@pytest.mark.redis
@pytest.mark.e2e
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_two_guards_in_one_app_keep_separate_caps(
    redis: RedisServer, backend: str, key: KeyFunc
) -> None:
    storage = redis.url if backend == "redis" else "memory://"
    chat, admin = capped(storage, "/chat", key), capped(storage, "/admin", key)
    assert chat.namespace != admin.namespace
    with serve(two_guard_app(chat, admin)) as server:
        on_chat = await opened(server.url + "/chat")
        on_admin = await opened(server.url + "/admin")  # the chat socket left room here
        assert await refused(server.url + "/chat") == (1008, "too_many_connections")
        assert await refused(server.url + "/admin") == (1008, "too_many_connections")
        await on_chat.close()
        await on_admin.close()
    assert chat.metrics.snapshot().closes_by_rule == {"too_many_connections": 1}
    assert admin.metrics.snapshot().closes_by_rule == {"too_many_connections": 1}
    if backend == "redis":
        names = redis.command("KEYS", "ws_guard:*").decode()
        assert f"ws_guard:{chat.namespace}:slots:" not in names  # every slot was given back


@pytest.mark.redis
@pytest.mark.e2e
async def test_guards_built_alike_share_and_a_namespace_decides(redis: RedisServer) -> None:
    one, two = capped(redis.url, "/chat", rules.by_user), capped(redis.url, "/chat", rules.by_user)
    assert one.namespace == two.namespace  # two workers of one app
    apart = capped(redis.url, "/chat", rules.by_user, namespace="chat-eu")
    together = capped(redis.url, "/other", rules.by_ip, namespace=one.namespace)
    with (
        serve(WSGuardMiddleware(echo, guard=one)) as a,
        serve(WSGuardMiddleware(echo, guard=two)) as b,
        serve(WSGuardMiddleware(echo, guard=apart)) as c,
    ):
        held = await opened(a.url + "/chat")
        assert await refused(b.url + "/chat") == (1008, "too_many_connections")
        also = await opened(c.url + "/chat")  # its own namespace: its own cap
        await also.close()
        await held.close()
    assert together.namespace == one.namespace


def test_the_derived_namespace_is_the_same_in_another_process() -> None:
    """Workers are separate processes: the default must not depend on the process."""
    code = (
        "from ws_guard import Guard, rules\n"
        "from tests.support.rate_helpers import HeaderSubject\n"
        "g = Guard(rules=[HeaderSubject(), rules.MaxConnectionsPerKey(1, key=rules.by_user)],"
        " paths=['/chat'])\n"
        "print(g.namespace)\n"
    )
    env = {"PYTHONPATH": SERVER_PATH, "PYTHONHASHSEED": "random", "PATH": ""}
    output = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    here = capped("memory://", "/chat", rules.by_user)
    assert output == here.namespace
    assert re.fullmatch(r"g[0-9a-f]{12}", here.namespace)


def test_the_derived_namespace_follows_paths_and_rules() -> None:
    base = capped("memory://", "/chat", rules.by_user).namespace
    assert capped("memory://", "/admin", rules.by_user).namespace != base
    assert capped("memory://", "/chat", rules.by_ip).namespace != base
    other_rules = Guard(
        rules=[HeaderSubject(), rules.MaxConnectionsPerKey(2, key=rules.by_user)], paths=["/chat"]
    )
    assert other_rules.namespace != base
    reordered = Guard(
        rules=[rules.MaxConnectionsPerKey(1, key=rules.by_user), HeaderSubject()], paths=["/chat"]
    )
    assert reordered.namespace == base


@pytest.mark.parametrize("value", ["", "a{b}", "has space", "x" * 65, 7, "chat:eu"])
def test_a_bad_namespace_raises_with_the_value(value: object) -> None:
    with pytest.raises(
        ConfigurationError, match="namespace must be .*not " + re.escape(repr(value))
    ):
        Guard(namespace=value)  # type: ignore[arg-type]
