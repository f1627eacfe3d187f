"""Background tasks on whichever async library runs the server (asyncio or trio).

ws_guard starts work that must outlive the task that asked for it: a held
auth decision must be applied even when the app cancels the ``receive()``
that waits for it, a close frame must go out from a sync deadline callback,
and the guard's timers run beside every connection. :func:`spawn` starts such
a *detached* task, which no caller's cancellation reaches; it is stopped only
by its own :meth:`Job.cancel`.

* On asyncio it is an ordinary ``asyncio.Task`` (``ensure_future``), so the
  asyncio path keeps its exact scheduling.
* On trio it is a system task (``trio.lowlevel.spawn_system_task``): trio has
  no detached tasks otherwise, and a system task lives until ``trio.run``
  ends. Its body runs in an anyio cancel scope; errors are kept on the job,
  never raised into trio (a raising system task would crash the run).

Both kinds answer the :class:`Job` protocol: ``done``, ``cancelled``,
``cancel``, ``result``, ``exception``, ``add_done_callback``; :func:`wait_done`
waits for one without cancelling it when the waiter is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable
from concurrent import futures
from types import ModuleType
from typing import Any, Generic, Protocol, TypeVar, cast

import anyio

# trio depends on sniffio and anyio no longer does: without sniffio, trio is
# not installed and only asyncio can be running (anyio reasons the same way).
_sniffio: ModuleType | None
try:
    import sniffio as _sniffio_module
except ModuleNotFoundError:
    _sniffio = None
else:
    _sniffio = _sniffio_module

logger = logging.getLogger("ws_guard")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class JobCancelledError(futures.CancelledError):
    """``result()`` of a trio job that was cancelled.

    Where ``asyncio.Future.result()`` raises ``CancelledError``: trio's
    ``Cancelled`` has no public constructor, and one raised outside the
    scope that cancelled would not be caught by it. A
    ``concurrent.futures.CancelledError`` (an ``Exception``, as a
    cancelled ``concurrent.futures.Future`` raises). Check ``cancelled()``
    before ``result()``.
    """


class Job(Protocol[T_co]):
    """The part of ``asyncio.Future`` ws_guard uses, on any backend."""

    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def cancel(self) -> bool: ...
    def result(self) -> T_co: ...
    def exception(self) -> BaseException | None: ...
    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...


def backend() -> str:
    """The running async library's name (``"asyncio"``, ``"trio"``), from sniffio.

    Raises ``RuntimeError`` outside an event loop.
    """
    if _sniffio is None:
        asyncio.get_running_loop()  # RuntimeError outside a loop, as sniffio's
        return "asyncio"
    name: str = _sniffio.current_async_library()
    return name


def on_asyncio() -> bool:
    """Whether an asyncio loop runs this thread; true in sync loop callbacks too.

    (sniffio answers only inside a task, not in a ``call_at`` callback.)
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def preload_backends() -> None:
    """Import anyio's backend modules now, not on a connection's path.

    anyio imports its backend implementation (``anyio._backends._asyncio``
    with its socket, stream and lock modules) on the first call that needs
    it; under a server without lifespan that is the first guarded handshake,
    and an import there blocks the event loop. asyncio's is always loaded;
    trio's only when trio is already imported (a trio server imports it
    before it loads the app), so an asyncio deployment never pays for trio.
    The module names are anyio's own layout: if they move, nothing breaks,
    the import just happens later.
    """
    backends = ["asyncio"]
    if "trio" in sys.modules:
        backends.append("trio")
    for name in backends:
        # Another anyio layout: it imports on first use, as without this.
        with contextlib.suppress(ImportError):
            importlib.import_module(f"anyio._backends._{name}")


def current_run() -> object | None:
    """What identifies the running event loop: the asyncio loop, or the trio run's root task.

    ``None`` outside both. Loop-bound state (timers, background tasks, locks)
    made in one run is dead in the next, and the next may be another backend.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    if _sniffio is None:
        return None
    try:
        library = _sniffio.current_async_library()
    except _sniffio.AsyncLibraryNotFoundError:
        return None
    if library != "trio":
        return None
    import trio

    return trio.lowlevel.current_root_task()


class TrioJob(Generic[T]):
    """A detached trio task with a future's interface (see the module docstring)."""

    __slots__ = ("_callbacks", "_cancelled", "_done", "_exc", "_result", "_scope", "_waiters")

    def __init__(self) -> None:
        self._scope = anyio.CancelScope()
        self._done = False
        self._cancelled = False
        self._result: T | None = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[Any], object]] = []
        self._waiters: list[anyio.Event] = []

    async def run(self, work: Awaitable[T]) -> None:
        ended = False
        try:
            with self._scope:
                self._result = await work
                ended = True
        except Exception as exc:  # noqa: BLE001 - kept on the job: its owner reads exception()
            self._exc = exc
            ended = True
        finally:
            # Not ended: cancelled, by its own scope or by the end of the run.
            self._cancelled = not ended
            self._finish()

    def _finish(self) -> None:
        self._done = True
        for waiter in self._waiters:
            waiter.set()
        self._waiters.clear()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # asyncio logs a failed done callback; raising would crash trio
                logger.exception("ws_guard task callback %r failed", callback)

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return self._done and self._cancelled

    def cancel(self) -> bool:
        if self._done:
            return False
        self._scope.cancel()
        return True

    def result(self) -> T:
        """The work's return value; re-raises its error.

        Raises:
            concurrent.futures.CancelledError: the job was cancelled (trio's
                ``Cancelled`` has no public constructor; this is what a
                cancelled stdlib future raises).
        """
        if self._exc is not None:
            raise self._exc
        if self._cancelled:
            raise JobCancelledError("the job was cancelled; it has no result")
        return cast(T, self._result)

    def exception(self) -> BaseException | None:
        return self._exc

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None:
        if self._done:
            fn(self)
        else:
            self._callbacks.append(fn)

    async def wait(self) -> None:
        if not self._done:
            event = anyio.Event()
            self._waiters.append(event)
            await event.wait()


def spawn(work: Awaitable[T]) -> Job[T]:
    """Start *work* as a detached task; see the module docstring."""
    if on_asyncio():
        return asyncio.ensure_future(work)
    import trio

    job: TrioJob[T] = TrioJob()
    trio.lowlevel.spawn_system_task(job.run, work, name=getattr(work, "__qualname__", None))
    return job


async def wait_done(job: Job[Any]) -> None:
    """Wait until *job* is done; cancelling the waiter leaves the job running."""
    if job.done():
        return
    if isinstance(job, TrioJob):
        await job.wait()
    else:
        # asyncio.wait never cancels what it waits for.
        await asyncio.wait((cast("asyncio.Future[Any]", job),))


async def stop(job: Job[Any] | None) -> None:
    """Cancel *job* and wait until it has ended (a cancel of the caller goes on)."""
    if job is None:
        return
    job.cancel()
    await wait_done(job)
