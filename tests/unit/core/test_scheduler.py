"""The shared deadline heap: order, cancel, one timer, rebuilds."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from ws_guard._core.scheduler import Scheduler
from ws_guard._core.tasks import wait_done
from ws_guard.testing import ManualClock


def test_fires_in_deadline_order_and_fifo_on_ties() -> None:
    clock = ManualClock(0.0)
    scheduler = Scheduler(clock)
    fired: list[str] = []
    for name, when in [("c", 3.0), ("a", 1.0), ("b1", 2.0), ("b2", 2.0), ("d", 4.0)]:
        scheduler.call_at(when, lambda name=name: fired.append(name))  # type: ignore[misc]
    assert len(scheduler) == 5
    assert scheduler.run_due(0.5) == 0
    assert scheduler.run_due(2.0) == 3
    assert fired == ["a", "b1", "b2"]
    clock.now = 10.0
    assert scheduler.run_due() == 2  # reads the injected clock
    assert fired == ["a", "b1", "b2", "c", "d"]
    assert len(scheduler) == 0
    assert not scheduler.timer_armed  # manual mode never arms a loop timer


def test_call_later_uses_the_clock() -> None:
    clock = ManualClock(50.0)
    scheduler = Scheduler(clock)
    deadline = scheduler.call_later(5.0, lambda: None)
    assert deadline.when == 55.0


def test_cancel_skips_and_is_idempotent() -> None:
    scheduler = Scheduler(ManualClock(0.0))
    fired: list[int] = []
    deadlines = [scheduler.call_at(float(i), lambda i=i: fired.append(i)) for i in range(5)]  # type: ignore[misc]
    deadlines[1].cancel()
    deadlines[1].cancel()
    deadlines[3].cancel()
    assert len(scheduler) == 3
    assert scheduler.run_due(10.0) == 3
    assert fired == [0, 2, 4]
    deadlines[0].cancel()  # already fired: no effect on the count
    assert len(scheduler) == 0


def test_cancelling_everything_empties_the_heap() -> None:
    scheduler = Scheduler(ManualClock(0.0))
    deadlines = [scheduler.call_at(float(i), lambda: None) for i in range(10)]
    for deadline in deadlines:
        deadline.cancel()
    assert len(scheduler) == 0
    assert scheduler._heap == []


def test_heap_is_rebuilt_when_cancelled_entries_dominate() -> None:
    scheduler = Scheduler(ManualClock(0.0))
    fired: list[int] = []
    deadlines = [scheduler.call_at(float(i), lambda i=i: fired.append(i)) for i in range(200)]  # type: ignore[misc]
    for deadline in deadlines[:150]:
        deadline.cancel()
    assert len(scheduler) == 50
    # Rebuilt once when live fell below half of 200 (99 left), not again since.
    assert len(scheduler._heap) == 99
    assert scheduler.run_due(1000.0) == 50
    assert fired == list(range(150, 200))


def test_callback_cancelling_others_during_run_due() -> None:
    scheduler = Scheduler(ManualClock(0.0))
    fired: list[int] = []
    deadlines: list = []  # type: ignore[type-arg]

    def cancel_the_rest() -> None:
        fired.append(-1)
        for deadline in deadlines[1:]:
            deadline.cancel()  # triggers a heap rebuild mid-run

    deadlines.append(scheduler.call_at(0.0, cancel_the_rest))
    deadlines.extend(
        scheduler.call_at(1.0 + i, lambda i=i: fired.append(i))  # type: ignore[misc]
        for i in range(100)
    )
    survivor = scheduler.call_at(0.5, lambda: fired.append(999))
    assert scheduler.run_due(1000.0) == 2
    assert fired == [-1, 999]
    assert len(scheduler) == 0
    assert survivor.cancelled  # fired deadlines read as done


def test_raising_callback_does_not_stall_later_deadlines() -> None:
    scheduler = Scheduler(ManualClock(0.0))
    fired: list[str] = []

    def broken() -> None:
        raise RuntimeError("callback bug")

    scheduler.call_at(1.0, broken)
    scheduler.call_at(2.0, lambda: fired.append("later"))
    with pytest.raises(RuntimeError, match="callback bug"):
        scheduler.run_due(5.0)
    assert scheduler.run_due(5.0) == 1
    assert fired == ["later"]


def test_close_drops_everything() -> None:
    scheduler = Scheduler(ManualClock(0.0))
    fired: list[int] = []
    deadline = scheduler.call_at(1.0, lambda: fired.append(1))
    scheduler.close()
    assert len(scheduler) == 0
    assert deadline.cancelled
    assert scheduler.run_due(10.0) == 0
    assert fired == []


async def test_one_loop_timer_for_all_deadlines() -> None:
    scheduler = Scheduler()
    now = scheduler.now()  # asyncio's loop.time(), time.monotonic() on trio
    done = anyio.Event()
    fired: list[str] = []

    scheduler.call_at(now + 60, lambda: fired.append("late"))
    timer = scheduler._timer
    assert scheduler.timer_armed
    assert timer is not None
    scheduler.call_at(now + 120, lambda: fired.append("later"))
    assert scheduler._timer is timer  # a later deadline keeps the armed timer

    def first() -> None:
        fired.append("first")
        done.set()

    early = scheduler.call_at(now + 0.02, first)
    assert scheduler._timer is not timer  # an earlier one re-arms once
    if not isinstance(timer, asyncio.TimerHandle):
        await wait_done(timer)  # trio's timer task ends at its next checkpoint
    assert timer.cancelled()
    with anyio.fail_after(2.0):
        await done.wait()
    assert fired == ["first"]
    assert early.cancelled  # fired deadlines read as done
    assert scheduler.timer_armed  # re-armed for the 60 s deadline
    assert scheduler._timer_when == pytest.approx(now + 60)
    scheduler.close()
    assert not scheduler.timer_armed


async def test_timer_disarms_when_last_deadline_is_cancelled() -> None:
    scheduler = Scheduler()
    deadline = scheduler.call_later(30, lambda: None)
    assert scheduler.timer_armed
    deadline.cancel()
    assert not scheduler.timer_armed


async def test_loop_timer_rearms_after_a_raising_callback(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = Scheduler()
    errors: list[object] = []
    if anyio_backend == "asyncio":  # asyncio's loop reports a raising call_at callback
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: errors.append(context.get("exception")))
    done = anyio.Event()

    def broken() -> None:
        raise RuntimeError("callback bug")

    now = scheduler.now()
    scheduler.call_at(now + 0.01, broken)
    scheduler.call_at(now + 0.02, done.set)
    try:
        with anyio.fail_after(2.0):
            await done.wait()
    finally:
        if anyio_backend == "asyncio":
            loop.set_exception_handler(None)
    if anyio_backend == "trio":  # trio's timer task logs it (ws_guard._core.scheduler)
        errors = [
            r.exc_info[1]
            for r in caplog.records
            if r.getMessage() == "ws_guard deadline callback failed" and r.exc_info
        ]
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
