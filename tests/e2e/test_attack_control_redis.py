"""Hostile state on the shared Redis must not stop a guard's control listener.

A process loads the revocations and bans already in Redis when it
subscribes (``_core/fanout.py``). A key it cannot apply (written by hand, by
another tool in the same key space, with a TTL past the year a revocation
may last, or a name that is not UTF-8) is skipped with a warning: the
listener goes on, loads the keys it can apply and hears published
operations.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import pytest
import redis as redis_py

from tests.support.helpers import eventually
from tests.support.redis_server import RedisServer
from ws_guard import Guard
from ws_guard.errors import ConfigurationError

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

NS = "attack"
TWO_YEARS_MS = str(2 * 366 * 86400 * 1000)


def set_raw(redis: RedisServer, key: bytes, value: bytes, px: str) -> None:
    """SET key value PX ms, with a key name that may be any bytes."""
    parts = [b"SET", key, value, b"PX", px.encode()]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    with socket.create_connection(("127.0.0.1", redis.port), 2) as sock:
        sock.sendall(payload)
        assert sock.recv(100) == b"+OK\r\n"


@pytest.mark.parametrize(
    "bad_key",
    [
        f"{NS}:revoked:jti:forever".encode(),  # a TTL past a year
        f"{NS}:ban:r:203.0.113.9".encode(),  # a ban for longer than a year
        f"{NS}:revoked:sub:".encode() + b"\xff\xfe",  # a name that is not UTF-8
        f"{NS}:ban:".encode() + b"\xff:\xfe",
    ],
)
async def test_an_unusable_key_in_redis_does_not_stop_the_listener(
    redis: RedisServer, bad_key: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    long = TWO_YEARS_MS if b"\xff" not in bad_key else "60000"
    set_raw(redis, bad_key, b"1", long)
    set_raw(redis, f"{NS}:revoked:jti:good".encode(), b"1", "60000")
    guard = Guard(storage=redis.url, namespace=NS)
    other = Guard(storage=redis.url, namespace=NS)
    await guard.startup()
    await other.startup()
    try:
        await eventually(lambda: guard.channel.subscribed, what="guard subscribed")
        await eventually(lambda: other.channel.subscribed, what="other subscribed")
        assert guard.revocations.revoked("good", None)
        # The listener still hears published operations after the bad key.
        await other.revoke(subject="mallory", until=time.time() + 60)
        await eventually(lambda: guard.revocations.revoked(None, "mallory"), what="heard")
    finally:
        await other.shutdown()
        await guard.shutdown()
    assert any("control" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


LONE = "\ud800"  # what a JSON body's "\ud800" decodes to: no UTF-8 form


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda g: g.revoke(jti=LONE, until=time.time() + 60), "jti"),
        (lambda g: g.revoke(jti="ok", subject="a" + LONE, until=time.time() + 60), "subject"),
        (lambda g: g.disconnect(key=LONE), "key"),
        (lambda g: g.disconnect(connection_id=LONE), "connection_id"),
        (lambda g: g.unban(LONE), "unban key"),
    ],
)
async def test_a_selector_without_utf8_form_is_refused_before_anything_applies(
    redis: RedisServer, call: Any, named: str
) -> None:
    guard = Guard(storage=redis.url, namespace=NS)
    await guard.startup()
    try:
        with pytest.raises(ConfigurationError, match=f"^{named} is not valid UTF-8 text: "):
            await call(guard)
        assert guard.metrics.snapshot().revocations == 0
        assert guard.revocations.in_force() == {"jti": {}, "subject": {}}
    finally:
        await guard.shutdown()


def command_calls(client: redis_py.Redis, command: str) -> int:
    """How many times the server ran *command* since CONFIG RESETSTAT (INFO commandstats)."""
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_an_operation_published_while_the_keys_load_is_applied(redis: RedisServer) -> None:
    """The listener subscribes before it loads: nothing published meanwhile is lost."""
    client = redis_py.Redis(port=redis.port)
    try:
        with client.pipeline(transaction=False) as pipe:
            for i in range(5000):
                pipe.set(f"{NS}:ban:r:10.0.{i >> 8}.{i & 255}", "ban", px=600_000)
            pipe.execute()
        client.config_resetstat()
        guard = Guard(storage=redis.url, namespace=NS)
        await guard.startup()
        try:
            await eventually(lambda: command_calls(client, "scan") > 0, what="the load started")
            message = {"op": "revoke", "subject": "mallory", "ttl": 60, "origin": "elsewhere"}
            client.publish(f"{NS}:control", json.dumps(message))
            await eventually(lambda: guard.channel.subscribed, what="subscribed", timeout=20)
            await eventually(lambda: guard.revocations.revoked(None, "mallory"), what="applied")
            assert len(await guard.bans()) == 5000
        finally:
            await guard.shutdown()
    finally:
        client.close()
