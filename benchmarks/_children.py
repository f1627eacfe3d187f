"""Child processes of a benchmark script (servers, redis-server) die with the script.

Two ways out would otherwise leave them running:

- SIGTERM (or SIGHUP) kills a Python script without running its ``finally``
  blocks; :func:`exit_on_sigterm` turns both into ``SystemExit`` in the main
  thread, so the cleanup that stops the children runs. While an event loop
  runs, that exception would land in whatever callback is running and may be
  swallowed there; :func:`run_stoppable` lets the loop handle both signals.
- SIGKILL runs nothing; :func:`spawn` asks Linux to SIGKILL the child when the
  script dies (``prctl(PR_SET_PDEATHSIG)``, prctl(2)). Elsewhere the child
  survives; whoever SIGKILLs a script should signal its process group (the
  tests start each script in a session of its own and do).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from types import FrameType
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: The signals that stop a script (SIGINT stays Python's KeyboardInterrupt).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
#: The signals the event loop of :func:`run_stoppable` takes over.
LOOP_SIGNALS = (*STOP_SIGNALS, signal.SIGINT)
#: Seconds between two cancellations of the tasks still running after a stop signal.
RECANCEL_EVERY = 0.2
#: Seconds the tasks get, after a stop signal, to end before the loop stops waiting.
STOP_GRACE = 3.0


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that sets the parent-death signal to SIGKILL (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(args: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **popen)``; on Linux the child dies when this process does.

    The death signal follows the *thread* that forked: spawn from the main
    thread (``preexec_fn`` is not safe while other threads run, either).
    """
    return subprocess.Popen(args, preexec_fn=_die_with_parent(), **popen)


def exit_on_sigterm() -> None:
    """Make SIGTERM and SIGHUP raise ``SystemExit(128 + signal)`` in the main thread."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


def run_stoppable(
    main: Coroutine[Any, Any, T],
    run: Callable[[Coroutine[Any, Any, Any]], Any] = asyncio.run,
) -> T:
    """``run(main)`` (``asyncio.run``, ``uvloop.run``); SIGTERM, SIGHUP or SIGINT stop it promptly.

    Raises ``SystemExit(128 + signal)`` (SIGINT: ``KeyboardInterrupt``) in
    the main thread once the loop is closed, so the caller's ``finally``
    blocks (which stop the children) run, as :func:`exit_on_sigterm` does
    outside a loop. Another exception that *main* raises, even while
    stopping, propagates unchanged.

    Why not :func:`exit_on_sigterm` inside the loop: its ``SystemExit`` is
    raised in whatever Python code runs when the signal lands, and uvloop
    catches any exception out of a protocol callback (``data_received``),
    logs "Fatal error on transport" and goes on (``_fatal_error`` in
    uvloop/handles/basetransport.pyx): the script ran on to the end of its
    duration; so did SIGINT's ``KeyboardInterrupt`` on Python 3.10, where
    ``uvloop.run`` installs no SIGINT handler of its own (asyncio.Runner, 3.11+,
    does). Here the loop takes the signals (``loop.add_signal_handler``)
    and cancels every task, again every ``RECANCEL_EVERY`` s for up to
    ``STOP_GRACE`` s: Python 3.10's ``asyncio.wait_for`` drops a cancellation
    that arrives as its inner awaitable completes (gh-86296), and a task
    that drops it would otherwise run on. Before the loop closes, the
    handlers that were installed before (:func:`exit_on_sigterm`'s) come back.
    """
    received: list[int] = []
    try:
        result: T = run(_stoppable(main, received))
    except asyncio.CancelledError:
        if not received:
            raise
        _stopped_by(received[0])
    if received:  # main ended on its own as the signal came: stop all the same
        _stopped_by(received[0])
    return result


def _stopped_by(sig: int) -> NoReturn:
    if sig == signal.SIGINT:
        raise KeyboardInterrupt from None
    raise SystemExit(128 + sig) from None


async def _stoppable(main: Coroutine[Any, Any, T], received: list[int]) -> T:
    """Run *main* as a task until it ends or a stop signal (appended to *received*) comes."""
    loop = asyncio.get_running_loop()
    job = loop.create_task(main)
    stop = loop.create_future()

    def on_signal(sig: int) -> None:
        if not stop.done():
            received.append(sig)
            stop.set_result(None)

    previous = {sig: signal.getsignal(sig) for sig in LOOP_SIGNALS}
    for sig in LOOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await asyncio.wait({job, stop}, return_when=asyncio.FIRST_COMPLETED)
        if stop.done():
            await _cancel_others(loop)
            if not job.done():  # it outlived STOP_GRACE
                raise asyncio.CancelledError
        return job.result()
    finally:
        job.cancel()  # a no-op once it is done; the runner reaps it otherwise
        stop.cancel()
        # Blocked while swapped: remove_signal_handler leaves SIG_DFL, which
        # would kill the script without its cleanup; a signal that comes
        # meanwhile reaches the restored handler.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, LOOP_SIGNALS)
        try:
            for sig in LOOP_SIGNALS:
                loop.remove_signal_handler(sig)
                signal.signal(sig, previous[sig])
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


async def _cancel_others(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every other task of *loop* until all have ended, for up to ``STOP_GRACE`` s."""
    me = asyncio.current_task()
    deadline = loop.time() + STOP_GRACE
    while True:
        others = {task for task in asyncio.all_tasks(loop) if task is not me}
        if not others:
            return
        left = deadline - loop.time()
        if left <= 0:
            late = f"{len(others)} task(s) still running {STOP_GRACE} s after the stop signal"
            print(late, file=sys.stderr, flush=True)
            return
        for task in others:
            task.cancel()
        await asyncio.wait(others, timeout=min(RECANCEL_EVERY, left))
