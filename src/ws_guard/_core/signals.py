"""Drain on SIGTERM/SIGINT before the server closes WebSockets itself.

uvicorn, on a shutdown signal, closes every WebSocket at once with a bare
1012 and only *then* sends ``lifespan.shutdown``, so a drain started from
the lifespan finds no connection left. The only point that comes before
uvicorn's own close is the signal. uvicorn installs its handlers with
``signal.signal`` before lifespan startup, so a handler installed at guard
startup runs first: it drains, then calls the handler it replaced, and the
server shuts down as it would have. A second signal during the drain is
passed on at once, so a second Ctrl+C still stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, Protocol

from ws_guard._core.tasks import Job, spawn
from ws_guard.errors import ConfigurationError

logger = logging.getLogger("ws_guard")
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def parse_signals(values: Iterable[signal.Signals | int | str]) -> tuple[signal.Signals, ...]:
    """``["SIGTERM", signal.SIGINT, 15]`` -> signals, rejecting unknown names."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigurationError(f"drain_signals must be a list of signals, not {values!r}")
    parsed: list[signal.Signals] = []
    for value in values:
        try:
            if isinstance(value, str):
                sig = signal.Signals[value.upper()]
            elif isinstance(value, int) and not isinstance(value, bool):
                sig = signal.Signals(value)
            else:
                raise TypeError(value)
        except (KeyError, ValueError, TypeError):
            raise ConfigurationError(f"drain_signals entry {value!r} is not a signal") from None
        if sig not in parsed:
            parsed.append(sig)
    return tuple(parsed)


class _Drainable(Protocol):
    """What a signal drains: a guard (``Guard.drain``)."""

    async def drain(self) -> None: ...


class SignalDrain:
    """Handlers that drain the guard, then hand the signal to the server."""

    def __init__(self, guard: _Drainable, signals: tuple[signal.Signals, ...]) -> None:
        self.guard = guard
        self.signals = signals
        self._previous: dict[signal.Signals, Handler] = {}
        #: Runs a callback in the server's event loop from a signal handler:
        #: ``loop.call_soon_threadsafe`` on asyncio, the trio token's
        #: ``run_sync_soon`` on trio.
        self._call_soon: Callable[..., object] | None = None
        self._task: Job[None] | None = None

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> bool:
        """Install in the running loop; only the main thread may set handlers."""
        if not self.signals or self._previous:
            return bool(self._previous)
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "ws_guard drain_signals ignored: the event loop is not in the main thread"
            )
            return False
        self._call_soon = _call_soon_threadsafe()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return True

    def uninstall(self) -> None:
        """Put back the replaced handlers, where ours is still the one installed."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, handler)
        self._call_soon = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        call_soon = self._call_soon
        if self._task is not None or call_soon is None:
            self._forward(signum, frame)  # a second signal: stop now, as asked
            return
        try:
            call_soon(self._start, signum)
        except RuntimeError:  # the loop is closed (trio: RunFinishedError)
            self._forward(signum, frame)

    def _start(self, signum: int) -> None:
        if self._task is None:
            self._task = spawn(self._drain_then_forward(signum))

    async def _drain_then_forward(self, signum: int) -> None:
        try:
            await self.guard.drain()
        finally:
            self._forward(signum, None)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        handler = self._previous.get(signal.Signals(signum))
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)


def _call_soon_threadsafe() -> Callable[..., object]:
    """How to run a callback in the running event loop from a signal handler."""
    try:
        return asyncio.get_running_loop().call_soon_threadsafe
    except RuntimeError:  # not asyncio: trio, the one other backend anyio runs
        import trio

        return trio.lowlevel.current_trio_token().run_sync_soon
