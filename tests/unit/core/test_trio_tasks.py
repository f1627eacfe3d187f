"""ws_guard._core.tasks: detached tasks with one future-like interface on asyncio and trio."""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures
from typing import Any

import anyio
import pytest

from tests.support.backends import on_both_backends
from ws_guard._core.tasks import spawn, stop, wait_done


@on_both_backends
async def test_a_cancelled_waiter_leaves_the_job_running(anyio_backend: str) -> None:
    release = anyio.Event()
    ended: list[str] = []

    async def work() -> str:
        await release.wait()
        ended.append("work")
        return "decided"

    job = spawn(work())
    seen: list[Any] = []
    job.add_done_callback(seen.append)
    with anyio.move_on_after(0.01) as waiting:
        await wait_done(job)  # the waiter gives up; the job must not
    assert waiting.cancelled_caught
    assert not job.done()
    release.set()
    await wait_done(job)
    assert job.result() == "decided"
    assert not job.cancelled()
    assert job.exception() is None
    assert ended == ["work"]
    await anyio.sleep(0)  # asyncio runs done callbacks in a later loop turn
    assert seen == [job]


@on_both_backends
async def test_errors_are_kept_and_cancel_is_reported(anyio_backend: str) -> None:
    async def broken() -> None:
        await anyio.sleep(0)
        raise KeyError("bug")

    failed = spawn(broken())
    await wait_done(failed)
    assert isinstance(failed.exception(), KeyError)
    with pytest.raises(KeyError):
        failed.result()
    sleeper = spawn(anyio.sleep_forever())
    await anyio.sleep(0)
    await stop(sleeper)
    assert sleeper.done()
    assert sleeper.cancelled()
    assert not sleeper.cancel()  # already done


@on_both_backends
async def test_a_failing_done_callback_is_logged(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(job: object) -> None:
        raise RuntimeError("callback bug")

    async def work() -> None:
        await anyio.sleep(0)

    job = spawn(work())
    job.add_done_callback(bad)
    await wait_done(job)
    for _ in range(3):  # asyncio logs it from the loop a turn later
        await anyio.sleep(0)
    assert any("callback bug" in repr(r.exc_info) for r in caplog.records if r.exc_info)
    assert all(r.levelno >= logging.ERROR for r in caplog.records if r.exc_info)


@on_both_backends
async def test_the_result_of_a_cancelled_job_raises_a_cancellation(anyio_backend: str) -> None:
    """As ``asyncio.Future.result()`` does; trio's ``Cancelled`` cannot be constructed."""
    sleeper = spawn(anyio.sleep_forever())
    await anyio.sleep(0)
    await stop(sleeper)
    expected = asyncio.CancelledError if anyio_backend == "asyncio" else futures.CancelledError
    with pytest.raises(expected):
        sleeper.result()
