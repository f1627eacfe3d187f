"""The guard: configuration parsed once, and the runtime rules see.

Users build one ``Guard`` and hand it to :class:`WSGuardMiddleware`. It owns
the rules, the load gauges, the deadline scheduler and the metrics, so any
part of the app can read ``guard.metrics.snapshot()``. Nothing here touches
the event loop until :meth:`startup` runs inside it. A ``Guard`` is the
:class:`ws_guard.rules.Runtime` its rules and gauges are bound to; its
lifecycle lives in :mod:`runtime`, close reporting in :mod:`closes` and path
matching in :mod:`paths`.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar, cast

from ws_guard._core.bans import Bans
from ws_guard._core.closes import CloseReporter, OnClose
from ws_guard._core.control import ControlPlane
from ws_guard._core.fanout import ControlChannel
from ws_guard._core.namespace import guard_namespace
from ws_guard._core.paths import PathMatcher
from ws_guard._core.plan import HookPlan
from ws_guard._core.revocations import Revocations
from ws_guard._core.runtime import Lifecycle
from ws_guard._core.scheduler import Scheduler
from ws_guard._core.signals import SignalDrain, parse_signals
from ws_guard._core.storage import SharedStorage
from ws_guard._core.tasks import preload_backends
from ws_guard._validate import (
    check_guard_clock,
    check_random_source,
    check_seconds,
    check_sync_callable,
)
from ws_guard.codes import SERVICE_RESTART
from ws_guard.errors import ConfigurationError
from ws_guard.load.base import LoadGauge
from ws_guard.metrics.snapshot import Metrics
from ws_guard.rules.base import Rule
from ws_guard.rules.keys import (
    DEFAULT_IPV6_PREFIX,
    IPNetwork,
    check_ipv6_prefix,
    parse_trusted_proxies,
    peer_checks,
)

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext

logger = logging.getLogger("ws_guard")
T = TypeVar("T")

_REJECT_MODES = ("close", "http")
_STORAGE_ERROR_MODES = ("allow", "deny")
#: Seconds; past these a value is a unit mistake (milliseconds), not a plan:
#: no orchestrator waits an hour for a drain, nor ten minutes for a handler.
_MAX_DRAIN_WINDOW = 3600.0
_MAX_APP_EXIT = 600.0


class Guard(ControlPlane):
    """Rules, gauges and shared runtime for one or more guarded apps."""

    def __init__(
        self,
        rules: Iterable[Rule] = (),
        load: Iterable[LoadGauge] = (),
        *,
        storage: str = "memory://",
        paths: Sequence[str] | None = None,
        trusted_proxies: Iterable[str] = (),
        reject: str = "close",
        on_storage_error: str = "allow",
        on_close: OnClose | None = None,
        clock: Callable[[], float] | None = None,
        random_source: random.Random | None = None,
        drain_window: float = 10.0,
        drain_signals: Iterable[signal.Signals | int | str] = (),
        app_exit_timeout: float | None = 5.0,
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
        namespace: str | None = None,
        count_messages: bool = False,
    ) -> None:
        self.rules: tuple[Rule, ...] = _check_items("rules", rules, Rule)
        if not isinstance(count_messages, bool):
            raise ConfigurationError(
                f"count_messages must be True or False, not {count_messages!r}"
            )
        #: Count each connection's data messages for ``connections()`` (a
        #: coroutine frame per message each way, so off by default).
        self.count_messages = count_messages
        self.gauges: tuple[LoadGauge, ...] = _check_items("load", load, LoadGauge)
        #: The shared ``limits`` storage; opened in :meth:`startup`, closed in :meth:`shutdown`.
        self.storage = SharedStorage(storage)
        preload_backends()  # imports belong here, not on the first handshake
        self.storage_uri = storage
        #: Which WebSocket paths are guarded (``paths``; see guards_path).
        self._paths = PathMatcher(paths)
        self.paths = self._paths.paths
        self.trusted_proxies: tuple[IPNetwork, ...] = parse_trusted_proxies(trusted_proxies)
        #: ``rules.by_ip`` keys an IPv6 client by this many leading bits (a /64).
        self.ipv6_prefix = check_ipv6_prefix(ipv6_prefix)
        if reject not in _REJECT_MODES:
            raise ConfigurationError(f"reject must be one of {_REJECT_MODES}, not {reject!r}")
        self.reject = reject
        if on_storage_error not in _STORAGE_ERROR_MODES:
            raise ConfigurationError(
                f"on_storage_error must be one of {_STORAGE_ERROR_MODES}, not {on_storage_error!r}"
            )
        self.on_storage_error = on_storage_error
        if on_close is not None and not callable(on_close):
            raise ConfigurationError(f"on_close must be callable, not {on_close!r}")
        check_sync_callable("on_close", on_close)
        self.random = check_random_source(random_source) or random.Random()
        self.scheduler = Scheduler(check_guard_clock(clock))
        self.metrics = Metrics()
        self.metrics.set_gauge_reader(lambda: tuple(g.reading() for g in self.gauges))
        #: Revoked token ids and subjects (``revoke()``; see _core/revocations.py).
        self.revocations = Revocations(self.scheduler.clock)
        #: Keys banned by ``rules.AutoBan`` (``bans()``, ``unban()``; see _core/bans.py).
        self.ban_store = Bans(self.scheduler.clock)
        self.metrics.set_control_readers(self.revocations.count, self.ban_store.count)
        #: Admitted connections that have not finished.
        self.live_connections: set[RuleContext] = set()
        #: Seconds a shutdown drain spreads its 1012 closes over.
        self.drain_window = check_seconds(
            "drain_window", drain_window, maximum=_MAX_DRAIN_WINDOW, positive=False
        )
        #: Seconds an app handler may run on after ws_guard closed its connection
        #: before ws_guard cancels it (None: never). A handler that only sends
        #: never sees the disconnect; this is what makes it end.
        self.app_exit_timeout = (
            None
            if app_exit_timeout is None
            else check_seconds(
                "app_exit_timeout", app_exit_timeout, maximum=_MAX_APP_EXIT, positive=False
            )
        )
        #: Prefix of every key this guard writes to storage (see _core/namespace.py).
        self.namespace = guard_namespace(namespace, self.paths, self.rules)
        #: Engine use: counts, logs and reports every close.
        self.reporter = CloseReporter(
            self.metrics, self.scheduler.clock, on_close, on_storage_error, self.random
        )
        #: With Redis storage, the control plane's keys and pub/sub (_core/fanout.py).
        self.channel = ControlChannel(
            self.storage, self.namespace, self.report_storage_error, self.apply_remote
        )
        self.revocations.remote = self.channel.revoked if self.channel.active else None
        self.ban_store.announce = self.announce_ban if self.channel.active else None
        self.ban_store.announce_strike = self.announce_strike if self.channel.active else None
        #: Engine use: startup, shutdown and drain.
        self.lifecycle = Lifecycle(
            self,
            self.rules,
            self.gauges,
            self.storage,
            self.scheduler,
            self.live_connections,
            SignalDrain(self, parse_signals(drain_signals)),
            self.drain_window,
            self.channel,
        )

        #: Engine use: which rules each connection hook calls (see _core/plan.py).
        self.plan = HookPlan(self.rules, peer_checks(self.rules), self.scheduler.clock)
        self.reporter.close_rules = self.plan.close_rules
        for rule in self.rules:
            rule.bind(self)
        for gauge in self.gauges:
            gauge.bind(self)

    def __repr__(self) -> str:
        return (
            f"Guard(rules={list(self.rules)!r}, load={list(self.gauges)!r}, paths={self.paths!r})"
        )

    def guards_path(self, path: str, root_path: str = "") -> bool:
        """Whether a WebSocket at *path* (the scope's, with its *root_path*) is guarded.

        See :meth:`PathMatcher.guards_path`: prefixes match the route path.
        """
        return self._paths.guards_path(path, root_path)

    # -- lifespan (see _core/runtime.py) ----------------------------------------
    @property
    def started(self) -> bool:
        """Started in the running event loop (or, outside one, at all)."""
        return self.lifecycle.started

    async def startup(self) -> None:
        """Create loop-bound resources; idempotent, safe from many tasks.

        Raises :class:`UnsupportedBackendError` on a backend a configured
        feature cannot run on, in every run, not only the first.
        """
        await self.lifecycle.startup()

    async def shutdown(self) -> None:
        """Drain, stop background work, release storage; the guard may start again."""
        await self.lifecycle.shutdown()

    @property
    def draining(self) -> bool:
        """True from the start of a drain until shutdown ends (for readiness probes)."""
        return self.lifecycle.draining

    async def drain(
        self,
        window: float | None = None,
        *,
        code: int = SERVICE_RESTART,
        retry_after: float = 1.0,
        grace: float = 2.0,
    ) -> None:
        """Close open connections with 1012 ``restarting; retry-after=<seconds>``, over *window*.

        Connection *i* of *n* is closed at ``window * i / n`` seconds (default
        ``drain_window``), each with its own ``retry-after`` in
        ``[retry_after, 2 * retry_after)``; new handshakes meanwhile get the
        same close. Returns once the last wave ran and the closed connections
        finished (at most *grace* seconds later). A second call joins the
        drain in progress.
        """
        await self.lifecycle.drain(window, code=code, retry_after=retry_after, grace=grace)

    # -- storage errors and log pacing (see _core/closes.py) --------------------
    def report_storage_error(self, exc: BaseException, what: str) -> bool:
        """Count a failed storage or key-server call; True when the policy allows.

        Logged at most once per ``storage_error_log_interval`` seconds, so an
        outage does not flood the log. The caller applies the answer: admit
        (fail open) or close with 1013 ``storage_unavailable`` (fail closed).
        """
        return self.reporter.report_storage_error(exc, what)

    @property
    def storage_error_log_interval(self) -> float:
        """Seconds between two storage-error WARNINGs (5)."""
        return self.reporter.storage_error_log_interval

    @storage_error_log_interval.setter
    def storage_error_log_interval(self, seconds: float) -> None:
        self.reporter.storage_error_log_interval = seconds

    @property
    def shadow_log_interval(self) -> float:
        """Seconds (guard clock) between two shadow-breach WARNINGs of one rule (5)."""
        return self.reporter.shadow_log_interval

    @shadow_log_interval.setter
    def shadow_log_interval(self, seconds: float) -> None:
        self.reporter.shadow_log_interval = seconds


def _check_items(what: str, items: Iterable[object], kind: type[T]) -> tuple[T, ...]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise ConfigurationError(f"{what} must be a list, not {items!r}")
    checked = tuple(items)
    for i, item in enumerate(checked):
        if not isinstance(item, kind):
            raise ConfigurationError(
                f"{what} entries must be {kind.__name__} objects, not {item!r}"
            )
        # One object twice would run its hooks twice per connection: a
        # connection cap would take two slots and give back one.
        if any(other is item for other in checked[:i]):
            raise ConfigurationError(
                f"{what} lists {item!r} twice; give each {kind.__name__} object once"
            )
    return cast(tuple[T, ...], checked)
