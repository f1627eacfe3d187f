"""The Redis fixtures of every Redis-backed test, loaded by tests/conftest.py.

- ``shared_redis``: one real ``redis-server`` per test module (module scope:
  the leftovers check wants every process gone when a module ends, so no
  session scope). Ask for it only to reach the server without flushing it.
- ``redis``: that server, emptied (``FLUSHALL``) before the test, so no key
  of an earlier test counts.
- ``own_redis``: a server of the test's own, which it may kill and restart
  (``RedisServer.kill``/``start`` on the same port); killed when the test ends.

Each starts only where a test asks for it; without ``redis-server`` on the
machine the test is skipped, or fails under ``WS_GUARD_REQUIRE_SERVICES=1``
(tests/support/services.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer, redis_server


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def redis(shared_redis: RedisServer) -> RedisServer:
    shared_redis.command("FLUSHALL")
    return shared_redis


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server
