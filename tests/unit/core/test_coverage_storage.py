"""``SharedStorage``: URI checks without leaking a password, its lifecycle, its maintenance task.

A storage URI may carry a Redis password, in the userinfo or as a
``password=`` query parameter (redis-py reads both); it never appears in a
``ConfigurationError`` or in ``repr()``. The storage is opened once per
start, refuses use outside ``startup()``/``shutdown()``, and runs rules'
periodic jobs on one task that survives a failing job, a slow job and a job
that swallows its cancellation. Memory storage in process; a real
``redis-server`` for the Redis lifecycle.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys

import pytest

from tests.support.helpers import eventually
from tests.support.redis_server import RedisServer
from ws_guard import ConfigurationError, Guard
from ws_guard._core.storage import SharedStorage

SECRET = "hunter2"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        (f"mysql://admin:{SECRET}@db:3306/0", "mysql://admin:***@db:3306/0"),
        (f"mysql://db/0?user=a&password={SECRET}", "mysql://db/0?user=a&password=***"),
        (f"mysql://:{SECRET}@db/0?PASSWORD={SECRET}#x", "mysql://:***@db/0?PASSWORD=***#x"),
    ],
)
def test_an_unsupported_scheme_is_named_without_the_password(uri: str, shown: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Guard(storage=uri)
    assert str(info.value) == (
        f"storage scheme 'mysql' in {shown!r} is not supported; use one of memory://, "
        "redis://, rediss://, redis+unix://, redis+sentinel://, redis+cluster://"
    )
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("uri", ["127.0.0.1:6379", "", 6379, None])
def test_a_storage_that_is_not_a_uri_is_named(uri: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Guard(storage=uri)  # type: ignore[arg-type]
    assert str(info.value) == (
        f"storage must be a URI such as 'memory://' or 'redis://host:6379/0', not {uri!r}"
    )


def test_a_redis_uri_without_redis_py_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # redis-py is installed here; None in sys.modules is how Python marks a
    # module that cannot be imported (importlib.util.find_spec returns None).
    monkeypatch.setitem(sys.modules, "redis", None)
    uri = f"redis+sentinel://:{SECRET}@s1:26379,s2:26379/primary?sentinel_password={SECRET}"
    with pytest.raises(ConfigurationError) as info:
        Guard(storage=uri)
    assert str(info.value) == (
        "storage 'redis+sentinel://:***@s1:26379,s2:26379/primary?sentinel_password=***' "
        "needs redis-py: pip install 'ws-guard[redis]'"
    )
    assert Guard(storage="memory://").storage.is_memory  # memory needs no redis-py


async def test_repr_hides_the_password_and_shows_whether_open() -> None:
    remote = SharedStorage(f"redis://app:{SECRET}@cache:6379/0?password={SECRET}&db=2")
    assert (
        repr(remote)
        == "SharedStorage('redis://app:***@cache:6379/0?password=***&db=2', open=False)"
    )
    local = SharedStorage("memory://")
    assert repr(local) == "SharedStorage('memory://', open=False)"
    await local.open()
    assert repr(local) == "SharedStorage('memory://', open=True)"
    await local.close()
    assert repr(local) == "SharedStorage('memory://', open=False)"


async def test_memory_storage_outside_startup_and_shutdown_is_an_error() -> None:
    storage = SharedStorage("memory://")
    with pytest.raises(
        RuntimeError, match=r"^the guard's storage is used before Guard.startup\(\)$"
    ):
        storage.limits  # noqa: B018 - the property raises
    await storage.open()
    first = storage.limits
    await storage.open()  # a second open keeps the storage and its counts
    assert storage.limits is first
    with pytest.raises(RuntimeError, match=r"^memory:// storage has no Redis client$"):
        storage.redis()
    await storage.close()
    await storage.close()  # idempotent
    with pytest.raises(RuntimeError, match=r"used before Guard\.startup"):
        storage.limits  # noqa: B018


@pytest.mark.redis
async def test_redis_storage_opens_once_and_closes_its_pool(redis: RedisServer) -> None:
    storage = SharedStorage(redis.url)
    await storage.open()
    client = storage.redis()
    assert await client.ping()
    await storage.open()  # a second open: the same client, no second pool
    assert storage.redis() is client
    assert repr(storage) == f"SharedStorage({redis.url!r}, open=True)"
    pool = client.connection_pool
    await storage.close()
    assert not storage.is_open
    assert not pool._in_use_connections
    assert all(not c.is_connected for c in pool._available_connections)
    with pytest.raises(RuntimeError, match=r"used before Guard\.startup"):
        storage.redis()
    await storage.open()  # a restart opens a fresh client
    assert storage.redis() is not client
    assert await storage.redis().ping()
    await storage.close()


@pytest.mark.parametrize("interval", [0, -1.0])
async def test_a_job_interval_must_be_positive(interval: float) -> None:
    storage = SharedStorage("memory://")

    async def job() -> None:
        pass

    with pytest.raises(ConfigurationError) as info:
        storage.add_job(interval, job)
    assert str(info.value) == f"job interval must be positive, not {interval!r}"


async def test_a_failing_job_is_logged_and_the_others_keep_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = SharedStorage("memory://")
    await storage.open()
    runs: list[str] = []

    async def broken() -> None:
        runs.append("broken")
        raise ValueError("bug in a job")

    async def counting() -> None:
        runs.append("counting")

    storage.add_job(0.01, broken)
    storage.add_job(0.01, counting)
    try:
        await eventually(lambda: runs.count("counting") >= 3, what="three runs of the good job")
        assert runs.count("broken") >= 2  # it keeps its schedule too
    finally:
        await storage.close()
    failures = [r for r in caplog.records if r.getMessage().startswith("ws_guard maintenance job")]
    assert failures
    assert all(r.levelno == logging.ERROR for r in failures)
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[1] is not None
    assert str(failures[0].exc_info[1]) == "bug in a job"


async def test_a_job_slower_than_its_interval_runs_back_to_back() -> None:
    storage = SharedStorage("memory://")
    await storage.open()
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    async def slow() -> None:
        starts.append(loop.time())
        await asyncio.sleep(0.03)  # three intervals: the next run is already due

    storage.add_job(0.01, slow)
    try:
        await eventually(lambda: len(starts) >= 3, what="three runs of the slow job")
    finally:
        await storage.close()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(gap >= 0.029 for gap in gaps)  # never two at once: one task runs them in turn


async def test_removed_jobs_stop_and_unknown_handles_are_ignored() -> None:
    storage = SharedStorage("memory://")
    await storage.open()
    runs: list[str] = []

    async def a() -> None:
        runs.append("a")

    async def b() -> None:
        runs.append("b")

    handle = storage.add_job(0.01, a)
    storage.add_job(0.01, b)
    storage.remove_job(handle)
    storage.remove_job(handle)  # twice: no error
    storage.remove_job(object())  # not a handle: no error
    try:
        await eventually(lambda: runs.count("b") >= 2, what="two runs of the kept job")
        assert "a" not in runs
    finally:
        await storage.close()


async def test_close_ends_the_task_even_when_a_job_swallows_its_cancellation() -> None:
    storage = SharedStorage("memory://")
    await storage.open()
    started = asyncio.Event()
    swallowed: list[bool] = []

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.append(True)  # a buggy job: the cancel goes no further

    storage.add_job(0.05, stubborn)
    await asyncio.wait_for(started.wait(), 5)
    task = storage._task
    assert task is not None
    await asyncio.wait_for(storage.close(), 5)  # the loop sees it was let go, and ends
    assert swallowed == [True]
    assert task.done()
    assert not task.cancelled()  # it ended by itself, through the loop's own check
