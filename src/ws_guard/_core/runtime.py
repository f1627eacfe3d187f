"""The guard's lifecycle: startup and shutdown in an event loop, and the drain.

Startup opens the storage and starts rules, gauges and the drain signal in
the running loop (asyncio or trio); shutdown drains open connections with
1012, then stops them in reverse. A guard whose loop ended without
shutdown (a second ``asyncio.run``) starts again in the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import TYPE_CHECKING

import anyio

from ws_guard._core.decisions import Close
from ws_guard._core.drain import Drain
from ws_guard._core.signals import SignalDrain
from ws_guard._core.tasks import backend, current_run, on_asyncio
from ws_guard.codes import SERVICE_RESTART
from ws_guard.errors import UnsupportedBackendError

if TYPE_CHECKING:
    from ws_guard._core.fanout import ControlChannel
    from ws_guard._core.scheduler import Scheduler
    from ws_guard._core.storage import SharedStorage
    from ws_guard.load.base import LoadGauge
    from ws_guard.rules.base import Rule
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

logger = logging.getLogger("ws_guard")

#: Seconds shutdown waits for rules, gauges and storage to stop (shielded).
STOP_GRACE = 5.0


class Lifecycle:
    """Startup, shutdown and drain of one guard (``guard.lifecycle``; engine use).

    *runtime* is what rules and gauges are started with (the guard itself);
    *connections* the guard's live set, which a drain closes.
    """

    def __init__(
        self,
        runtime: Runtime,
        rules: tuple[Rule, ...],
        gauges: tuple[LoadGauge, ...],
        storage: SharedStorage,
        scheduler: Scheduler,
        connections: Collection[RuleContext],
        signal_drain: SignalDrain,
        drain_window: float,
        channel: ControlChannel | None = None,
    ) -> None:
        self.runtime = runtime
        self.rules = rules
        self.gauges = gauges
        self.storage = storage
        self.scheduler = scheduler
        self.connections = connections
        self.signal_drain = signal_drain
        self.drain_window = drain_window
        #: The control plane's Redis subscriber (_core/fanout.py); started last.
        self.channel = channel
        self._drain: Drain | None = None
        self._started = False
        #: The event loop (or trio run) startup ran in; see tasks.current_run.
        self._run: object | None = None
        self._lock_run: object | None = None
        #: How often the guard moved to a new loop (see _leave_run).
        self._left_runs = 0
        self._start_lock: anyio.Lock | None = None

    @property
    def started(self) -> bool:
        """Started in the running event loop (or, outside one, at all).

        A guard started in an earlier loop that ended without
        :meth:`shutdown` (two ``asyncio.run``/``trio.run`` in sequence, a
        second TestClient) is not started in this one: the next
        :meth:`startup` checks the backend again.
        """
        if not self._started:
            return False
        run = current_run()
        return run is None or run is self._run

    async def startup(self) -> None:
        """Create loop-bound resources; idempotent, safe from many tasks.

        Raises :class:`UnsupportedBackendError` on a backend a configured
        feature cannot run on, in every run, not only the first.
        """
        run = current_run()
        if self._started and self._run is run:
            return
        self.check_backend()
        if self._start_lock is None or self._lock_run is not run:
            self._start_lock = anyio.Lock()  # an anyio lock belongs to one run
            self._lock_run = run
        async with self._start_lock:
            if self._started and self._run is not run:
                await self._leave_run()  # started in a loop that has ended
            if not self._started:  # another task may have started it meanwhile
                self._run = run
                await self.storage.open()
                for rule in self.rules:
                    await rule.startup(self.runtime)
                for gauge in self.gauges:
                    await gauge.startup(self.runtime)
                self.signal_drain.install()
                if self.channel is not None:
                    await self.channel.start()
                self._started = True

    def asyncio_only(self) -> list[str]:
        """The configured features that run on asyncio only, each named for an error message.

        A Redis storage is one: ``limits``' and redis-py's clients are asyncio
        code (``redis.asyncio``), and fail on trio at the first call.
        """
        features: list[str] = []
        if not self.storage.is_memory:
            features.append(f"storage={self.storage!r} (redis-py's asyncio client)")
        return features

    def check_backend(self) -> None:
        """Raise :class:`UnsupportedBackendError` when a feature cannot run on this backend."""
        if on_asyncio():
            return
        features = self.asyncio_only()
        if features:
            raise UnsupportedBackendError(
                f"ws_guard runs on {backend()} here, but {', '.join(features)} needs asyncio: "
                "run the server on asyncio, or use storage='memory://'"
            )

    async def shutdown(self) -> None:
        """Drain, stop background work, release storage; the guard may start again.

        Cancelled during the drain (a server that gives its lifespan shutdown
        a deadline, a second Ctrl-C), the drain ends there but the rest still
        runs, shielded: otherwise the samplers and storage tasks would run on
        and the guard would stay started. That rest gets :data:`STOP_GRACE`
        seconds (logged when it runs out), so a release that waits on a dead
        Redis cannot hold shutdown for ever.
        """
        if not self._started:
            return
        try:
            if self.connections or self._drain is not None:
                await self.drain()
        finally:
            # Bounded: a rule or storage whose release waits on a dead Redis
            # must not turn a cancelled shutdown into one that never returns.
            with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_GRACE) as bound:
                await self._stop()
            if bound.cancelled_caught:
                logger.warning(
                    "ws_guard's shutdown stopped waiting for its rules and storage after %g s",
                    STOP_GRACE,
                )

    async def _leave_run(self) -> None:
        """Stop what startup began in an event loop that ended without :meth:`shutdown`.

        Its timers and background tasks (gauge samplers, the lag probe, the
        storage's maintenance task, the drain signal's loop) ended with it;
        without a restart in the running loop the gauges would keep their
        last reading for good. Nothing is drained: that loop's connections
        are gone. A Redis storage is refused (:class:`UnsupportedBackendError`):
        redis-py's connections belong to the closed loop and cannot even be
        closed from this one ("Event loop is closed").
        """
        if not self.storage.is_memory:
            raise UnsupportedBackendError(
                f"storage={self.storage!r} was opened in an event loop that ended without "
                "guard.shutdown(), and its Redis connections cannot move to this one: "
                "shut the guard down before its loop ends (the ASGI lifespan does)"
            )
        # Once per guard: a TestClient without ``with`` moves on every connection.
        logger.log(
            logging.DEBUG if self._left_runs else logging.WARNING,
            "ws_guard was started in an event loop that ended without guard.shutdown(); "
            "starting its background work again in this one (%s)",
            backend(),
        )
        self._left_runs += 1
        await self._stop()

    async def _stop(self) -> None:
        self._started = False
        if self.channel is not None:
            await self.channel.stop()
        self.signal_drain.uninstall()
        for gauge in self.gauges:
            await gauge.shutdown(self.runtime)
        for rule in self.rules:
            await rule.shutdown(self.runtime)
        await self.storage.close()
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        self.scheduler.close()

    @property
    def draining(self) -> bool:
        """True from the start of a drain until shutdown ends (for readiness probes)."""
        return self._drain is not None

    async def drain(
        self,
        window: float | None = None,
        *,
        code: int = SERVICE_RESTART,
        retry_after: float = 1.0,
        grace: float = 2.0,
    ) -> None:
        """Start the drain (see :meth:`ws_guard.Guard.drain`) or join the one in progress."""
        if self._drain is None:
            self._drain = Drain(
                self.runtime,
                self.drain_window if window is None else window,
                code,
                retry_after,
                grace,
            )
            self._drain.start()
        await self._drain.wait()

    def drain_admitted(self, conn: RuleContext) -> None:
        """*conn* was admitted; a drain whose waves all ran closes it at once.

        A handshake can be past the drain check and still in admission (a
        storage call, a key fetch) when the last wave runs.
        """
        if self._drain is not None:
            self._drain.admitted(conn)

    def drain_refusal(self) -> Close | None:
        """The close a handshake gets while the guard drains, else ``None``."""
        drain = self._drain
        return None if drain is None else drain.close_for_one()
