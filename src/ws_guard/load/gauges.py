"""Built-in load gauges: open connections, and gauges the user reads."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from ws_guard._core.tasks import Job, spawn, stop
from ws_guard._validate import (
    check_count,
    check_positive,
    check_seconds,
    is_async_callable,
    is_number,
)
from ws_guard.errors import ConfigurationError
from ws_guard.load.base import LoadGauge
from ws_guard.load.hysteresis import Hysteresis, check_band

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ws_guard.load.base import GaugeOptions
    from ws_guard.rules.runtime import Runtime

logger = logging.getLogger("ws_guard")

#: A user gauge's reading: a number, or an awaitable of one.
Read = Callable[[], "float | Awaitable[float]"]
#: The longest ``interval``/``timeout`` of a user read (seconds): a reading
#: older than minutes no longer describes the load.
MAX_SAMPLE = 600.0


class ConnectionCount(LoadGauge):
    """Open guarded connections in this process; connection ``limit + 1`` is shed.

    Checked before auth and storage, so handshakes that are still being
    admitted are not counted yet: with slow admission rules, concurrent
    handshakes may pass the count by at most the number in flight.
    Connections waiting for a first-message token are not counted either
    (``metrics.pending_auth``): they have their own bound, so tokenless
    sockets cannot shed authenticated users.
    """

    def __init__(
        self, limit: int, *, name: str = "connections", **options: Unpack[GaugeOptions]
    ) -> None:
        check_count("ConnectionCount limit", limit)
        super().__init__(limit, name=name, **options)

    def value(self) -> float:
        if self._guard is None:
            return 0
        metrics = self._guard.metrics
        return metrics.active_connections - metrics.pending_auth


class Gauge(LoadGauge):
    """A gauge the user reads: RSS, a queue's depth, a downstream's health.

    A sync ``read`` must be cheap: it runs at every handshake (and every
    ``interval`` in the background, to keep metrics and hysteresis current).
    An async ``read`` never runs on the handshake path: a background task
    samples it every ``interval`` with a ``timeout`` (default ``interval``).
    A read that raises or times out is logged and the last value is kept.
    The gauge trips at ``limit`` and clears once readings stay below
    ``clear_below`` (default ``limit``) for ``hold`` seconds (default 0).
    """

    def __init__(
        self,
        read: Read,
        limit: float,
        *,
        name: str,
        interval: float = 1.0,
        timeout: float | None = None,
        clear_below: float | None = None,
        hold: float = 0.0,
        **options: Unpack[GaugeOptions],
    ) -> None:
        if not callable(read):
            raise ConfigurationError(f"Gauge read must be callable, not {read!r}")
        limit = check_positive("Gauge limit", limit)
        clear, self.hold = check_band("Gauge", limit, clear_below, hold, default_clear=limit)
        self.interval = check_seconds("Gauge interval", interval, maximum=MAX_SAMPLE)
        self.timeout = (
            self.interval
            if timeout is None
            else check_seconds("Gauge timeout", timeout, maximum=MAX_SAMPLE)
        )
        super().__init__(limit, name=name, **options)
        self.read = read
        self.clear_below = clear
        self.is_async = is_async_callable(read)
        #: Reads that raised, returned a non-number or timed out.
        self.read_errors = 0
        self._state = Hysteresis(limit, clear, self.hold)
        self._value = 0.0
        self._task: Job[None] | None = None
        self._run_token: object | None = None
        self._last_error_log = float("-inf")

    def value(self) -> float:
        """The last reading."""
        return self._value

    def tripped(self) -> bool:
        return self._state.tripped

    def observe(self, now: float) -> bool:
        if self.is_async:
            # The last sample stands until the next one: only a reading may
            # change the state. Polling the clock here would clear a gauge
            # with hold=0 a moment after every high sample.
            return self._state.tripped
        try:
            result = self.read()
        except Exception as exc:  # noqa: BLE001 - the user's code; counted and logged
            return self._read_failed(now, exc)
        if inspect.isawaitable(result):  # a sync-looking callable that returns a coroutine
            self.is_async = True
            if inspect.iscoroutine(result):
                result.close()
            return self._state.tripped
        return self._feed(now, result)

    @property
    def tripped_since(self) -> float | None:
        return self._state.tripped_since

    # -- sampling --------------------------------------------------------------
    async def sample(self, now: float | None = None) -> bool:
        """Read once (awaiting an async read) and feed the reading at *now*.

        The background task calls this every ``interval``; with an injected
        guard clock it does not run, and tests call this directly.
        """
        try:
            result = self.read()
            if inspect.isawaitable(result):
                self.is_async = True
                with anyio.fail_after(self.timeout):
                    result = await result
        except Exception as exc:  # noqa: BLE001 - the user's code (or its timeout); logged
            return self._read_failed(self._now() if now is None else now, exc)
        return self._feed(self._now() if now is None else now, result)

    async def startup(self, guard: Runtime) -> None:
        await super().startup(guard)
        if self._task is None and not guard.scheduler.manual:
            self._state.reset()  # times from a previous loop mean nothing in this one
            token = self._run_token = object()
            self._task = spawn(self._run(token))

    async def shutdown(self, guard: Runtime) -> None:
        task, self._task = self._task, None
        self._run_token = None  # the loop ends by itself once let go (see _run)
        await stop(task)  # a cancel of the caller itself goes on
        await super().shutdown(guard)

    async def _run(self, token: object) -> None:
        # Ends when shutdown cancels it (its cancel scope, not the read's
        # timeout), or, should the user's read swallow that cancel, at the
        # next turn, once shutdown has let go of its token.
        while self._run_token is token:
            await self.sample()
            if self._run_token is not token:
                return
            await anyio.sleep(self.interval)

    def _now(self) -> float:
        guard = self._guard
        return anyio.current_time() if guard is None else guard.scheduler.now()

    def _feed(self, now: float, result: object) -> bool:
        if not is_number(result):
            return self._read_failed(
                now, TypeError(f"read returned {result!r}, not a finite number")
            )
        self._value = float(result)
        return self._state.observe(now, self._value)

    def _read_failed(self, now: float, exc: BaseException) -> bool:
        """Count and log (at most every 30 s); the last value stands for this read."""
        self.read_errors += 1
        stamp = time.monotonic()
        if stamp - self._last_error_log >= 30.0:
            self._last_error_log = stamp
            logger.warning(
                "ws_guard gauge %s could not read (%s: %s); keeping the last value %r",
                self.name,
                type(exc).__name__,
                exc,
                self._value,
                extra={"ws_gauge": self.name},
            )
        return self._state.observe(now, self._value)
