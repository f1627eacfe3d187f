"""The guard: configuration parsed once, plus the shared runtime.

Users build one ``Guard`` and hand it to :class:`WSGuardMiddleware`. It owns
the rules, the load gauges, the deadline scheduler and the metrics, so any
part of the app can read ``guard.metrics.snapshot()``. Nothing here touches
the event loop until :meth:`startup` runs inside it.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, cast

import anyio

from ws_guard._core.decisions import Close, http_retry_after
from ws_guard._core.drain import Drain
from ws_guard._core.fast_path import FusedRun, plan_checks
from ws_guard._core.request import loggable_path, route_path
from ws_guard._core.scheduler import Scheduler
from ws_guard._core.signals import SignalDrain, parse_signals
from ws_guard._core.storage import SharedStorage
from ws_guard._core.tasks import backend, current_run, on_asyncio, preload_backends
from ws_guard._validate import check_clock, check_random_source, check_seconds
from ws_guard.codes import SERVICE_RESTART, TRY_AGAIN_LATER
from ws_guard.errors import ConfigurationError, UnsupportedBackendError
from ws_guard.load.base import LoadGauge
from ws_guard.metrics.snapshot import Metrics
from ws_guard.rules.auth.jwt import check_user_keys_at_handshake
from ws_guard.rules.base import Rule, overrides
from ws_guard.rules.keys import (
    DEFAULT_IPV6_PREFIX,
    IPNetwork,
    check_ipv6_prefix,
    parse_trusted_proxies,
    peer_checks,
)
from ws_guard.rules.limits.common import guard_namespace
from ws_guard.rules.origin import check_cookie_origin

if TYPE_CHECKING:
    from ws_guard._core.connection import Connection

logger = logging.getLogger("ws_guard")
T = TypeVar("T")

_RATE_REASONS = frozenset({"rate_limited", "connect_rate_limited", "too_many_connections"})
_REJECT_MODES = ("close", "http")
_STORAGE_ERROR_MODES = ("allow", "deny")
#: Seconds; past these a value is a unit mistake (milliseconds), not a plan:
#: no orchestrator waits an hour for a drain, nor ten minutes for a handler.
_MAX_DRAIN_WINDOW = 3600.0
_MAX_APP_EXIT = 600.0


@dataclass(frozen=True, slots=True)
class CloseEvent:
    """What an ``on_close`` hook receives for each close ws_guard counts.

    ``code`` is what the client got: a close code (1000-4999), or the HTTP
    status of a handshake refused without a close frame (an app's refusal
    before accept: 403 or its own response's status; a ``reject="http"``
    denial: 503, 429 or 403). ``reason`` is the close reason (for an HTTP
    denial, the reason its body carries); ``duration`` is in seconds.
    """

    code: int
    reason: str
    rule: str | None
    initiator: str
    duration: float
    shadow: bool
    client_ip: str
    connection_id: str


OnClose = Callable[[CloseEvent], object]


class Guard:
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
    ) -> None:
        self.rules: tuple[Rule, ...] = _check_items("rules", rules, Rule)
        check_cookie_origin(self.rules)
        check_user_keys_at_handshake(self.rules)
        self.gauges: tuple[LoadGauge, ...] = _check_items("load", load, LoadGauge)
        #: The shared ``limits`` storage; opened in :meth:`startup`, closed in :meth:`shutdown`.
        self.storage = SharedStorage(storage)
        preload_backends()  # imports belong here, not on the first handshake
        self.storage_uri = storage
        self.paths = _check_paths(paths)
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
        self.on_close = on_close
        self.random = check_random_source(random_source) or random.Random()
        self.scheduler = Scheduler(check_clock(clock))
        self.metrics = Metrics()
        self.metrics.set_gauge_reader(lambda: tuple(g.reading() for g in self.gauges))
        #: Admitted connections that have not finished.
        self.connections: set[Connection] = set()
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
        self._warned_prefixes: set[str] = set()
        self._matched = False  # some WebSocket path matched ``paths``
        self._warned_unmatched = False
        #: Prefix of every key this guard writes to storage (see _shared.guard_namespace).
        self.namespace = guard_namespace(namespace, self.paths, self.rules)
        self._signal_drain = SignalDrain(self, parse_signals(drain_signals))
        self._drain: Drain | None = None

        ordered = sorted(
            peer_checks(self.rules) + self.rules, key=lambda rule: rule.stage
        )  # stable: user order within a stage, the peer check first
        self.admission_rules: tuple[tuple[Rule, bool], ...] = tuple(
            (rule, overrides(rule, "release")) for rule in ordered if overrides(rule, "admit")
        )
        self.connect_rules = tuple(r for r in ordered if overrides(r, "on_connect"))
        self.checker_rules = tuple(r for r in ordered if overrides(r, "checker"))
        #: What each connection's message checks are built from (see _core/fast_path.py).
        self.check_plan = plan_checks(self.checker_rules, self.scheduler.clock)
        #: The plan's first item when it is a fused run (for reading).
        first = self.check_plan[0] if self.check_plan else None
        self.lead_run = first if isinstance(first, FusedRun) else None
        self.accept_rules = tuple(r for r in self.rules if overrides(r, "on_accept"))
        self.open_rules = tuple(r for r in self.rules if overrides(r, "on_open"))
        self.storage_error_log_interval = 5.0
        #: Seconds (guard clock) between two shadow-breach WARNINGs of one rule.
        self.shadow_log_interval = 5.0
        # Rule label -> (time of its last WARNING, breaches not logged since);
        # keyed by configured names only, so bounded by the configuration.
        self._shadow_logs: dict[str, tuple[float, int]] = {}
        #: App close codes already warned about (see warn_unsendable_code).
        self._unsendable_warned: set[int] = set()
        self._last_storage_log = float("-inf")
        self._started = False
        #: The event loop (or trio run) startup ran in; see _tasks.current_run.
        self._run: object | None = None
        self._lock_run: object | None = None
        #: How often the guard moved to a new loop (see _leave_run).
        self._left_runs = 0
        self._start_lock: anyio.Lock | None = None
        for rule in self.rules:
            rule.bind(self)
        for gauge in self.gauges:
            gauge.bind(self)

    def __repr__(self) -> str:
        return (
            f"Guard(rules={list(self.rules)!r}, load={list(self.gauges)!r}, paths={self.paths!r})"
        )

    # -- paths ----------------------------------------------------------------
    def guards_path(self, path: str, root_path: str = "") -> bool:
        """Whether a WebSocket at *path* is guarded (prefix match on segments).

        *path* and *root_path* are the scope's. ``paths`` match the route
        path, *path* without *root_path* (see :func:`route_path`), so
        ``paths=["/ws"]`` guards ``/ws`` in an app mounted at ``/api``
        (Starlette ``Mount``, uvicorn ``--root-path``). A prefix that names
        the mount too (``"/api/ws"``) still guards it, matched on the full
        path, and a warning says once to drop the mount part: a guard never
        guards less than either reading of its ``paths``. While nothing has
        matched, a path that ends in a prefix below a mount warns once too.
        """
        if self.paths is None:
            return True
        routed = route_path(path, root_path) or "/"  # the mount's own root routes as "/"
        for prefix in self.paths:
            if _under(routed, prefix):
                self._matched = True
                return True
        if routed != path:
            for prefix in self.paths:
                if _under(path, prefix):
                    self._warn_mount_prefix(prefix, root_path)
                    self._matched = True
                    return True
        if not self._matched and not self._warned_unmatched:
            self._warn_unmatched(routed, root_path)
        return False

    def _warn_unmatched(self, routed: str, root_path: str) -> None:
        """Say once that ``paths`` name a route deeper in the app than the guard sits.

        A guard on the outer app of ``Mount("/api", routes=[...])`` sees
        ``/api/ws``; ``paths=["/ws"]`` never matches it. Only while no
        WebSocket path has matched yet: after that, misses are the
        unguarded paths the user meant.
        """
        for prefix in self.paths or ():
            if _below_root(routed, prefix):
                self._warned_unmatched = True
                logger.warning(
                    "ws_guard paths=%r matched no WebSocket path yet, and route path %r ends "
                    "in %r (root_path=%r): paths are matched on the route path where the "
                    "middleware sits. Add the middleware to the mounted app or name the full "
                    "route path",
                    list(self.paths or ()),
                    routed,
                    prefix,
                    root_path,
                )
                return

    def _warn_mount_prefix(self, prefix: str, root_path: str) -> None:
        if prefix in self._warned_prefixes:
            return
        self._warned_prefixes.add(prefix)
        logger.warning(
            "ws_guard paths entry %r matched only the full path: the app is mounted at "
            "root_path=%r and routes without it. Guarded anyway; write the route path "
            "(paths=%r) to say what is meant",
            prefix,
            root_path,
            [route_path(p, root_path) or "/" for p in self.paths or ()],
        )

    # -- lifespan -------------------------------------------------------------
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
                    await rule.startup(self)
                for gauge in self.gauges:
                    await gauge.startup(self)
                self._signal_drain.install()
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
        """Drain, stop background work, release storage; the guard may start again."""
        if not self._started:
            return
        if self.connections or self._drain is not None:
            await self.drain()
        await self._stop()

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
        self._signal_drain.uninstall()
        for gauge in self.gauges:
            await gauge.shutdown(self)
        for rule in self.rules:
            await rule.shutdown(self)
        await self.storage.close()
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        self.scheduler.close()

    # -- drain -----------------------------------------------------------------
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
        """Close open connections with 1012 ``restarting; retry-after=<seconds>``, over *window*.

        Connection *i* of *n* is closed at ``window * i / n`` seconds, each with
        its own ``retry-after`` in ``[retry_after, 2 * retry_after)``; new
        handshakes meanwhile get the same close. Returns once the last wave
        ran and the closed connections finished (at most *grace* seconds
        later). A second call joins the drain in progress.
        """
        if self._drain is None:
            self._drain = Drain(
                self,
                self.drain_window if window is None else window,
                code,
                retry_after,
                grace,
            )
            self._drain.start()
        await self._drain.wait()

    def drain_admitted(self, conn: Connection) -> None:
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

    # -- closes ----------------------------------------------------------------
    def record_close(
        self,
        conn: Connection,
        close: Close | None,
        code: int | None = None,
        initiator: str = "guard",
        *,
        status: int | None = None,
    ) -> None:
        """Count one close, log ws_guard's own, and tell the ``on_close`` hook.

        *status*: the HTTP status a ``reject="http"`` denial sent instead of
        a close frame; it is counted (and reported) in place of the code,
        since it is what the client got.
        """
        rule: str | None = None
        reason = ""
        if close is not None:
            code, rule, reason = close.code, close.rule, close.wire_reason
            if status is not None:
                code = status
        elif code is None:
            raise TypeError("record_close needs a close decision or a code")
        self.metrics.record_close(code, initiator, rule)
        if close is not None:
            logger.info(
                "ws_guard closed connection code=%d rule=%s client=%s path=%s",
                code,
                rule,
                conn.client_ip,
                loggable_path(conn.path),  # client text: escaped, cut short
                extra={"ws_code": code, "ws_rule": rule, "ws_client": conn.client_ip},
            )
        self._emit(conn, code, reason, rule, initiator, shadow=False)

    def warn_unsendable_code(self, code: int, sent: int) -> None:
        """Log once per *code* that the app closed with a code no frame may carry.

        The set is the guard's own and bounded: the app picks the codes, but
        a buggy app passing client input through must not grow it forever.
        """
        warned = self._unsendable_warned
        if code in warned or len(warned) >= _MAX_WARNED_CODES:
            return
        warned.add(code)
        logger.warning(
            "ws_guard: the app closed with code %d, which RFC 6455 section 7.4 does not "
            "allow in a close frame; sent %d instead (logged once per code)",
            code,
            sent,
            extra={"ws_code": code, "ws_sent_code": sent},
        )

    def record_shadow(self, conn: Connection, close: Close) -> None:
        """Count a shadow breach; log it unless this rule logged one in the last interval.

        Every breach is counted and reaches ``on_close``; the WARNING is
        written at most once per ``shadow_log_interval`` seconds per rule, with
        the number left out since: a breach can be one tiny frame, and a log
        record per frame would let a client write the server's log at its
        own rate.
        """
        self.metrics.record_shadow(close.rule)
        now = self.scheduler.clock()
        last, skipped = self._shadow_logs.get(close.rule, (-math.inf, 0))
        if now - last < self.shadow_log_interval:
            self._shadow_logs[close.rule] = (last, skipped + 1)
        else:
            self._shadow_logs[close.rule] = (now, 0)
            logger.warning(
                "ws_guard shadow breach code=%d rule=%s client=%s path=%s%s",
                close.code,
                close.rule,
                conn.client_ip,
                loggable_path(conn.path),
                f" ({skipped} more not logged)" if skipped else "",
                extra={
                    "ws_code": close.code,
                    "ws_rule": close.rule,
                    "ws_client": conn.client_ip,
                    "ws_not_logged": skipped,
                },
            )
        self._emit(conn, close.code, close.wire_reason, close.rule, "guard", shadow=True)

    def _emit(
        self,
        conn: Connection,
        code: int,
        reason: str,
        rule: str | None,
        initiator: str,
        *,
        shadow: bool,
    ) -> None:
        hook = self.on_close
        if hook is None:
            return
        duration = time.monotonic() - conn.opened_at if conn.admitted else 0.0
        event = CloseEvent(code, reason, rule, initiator, duration, shadow, conn.client_ip, conn.id)
        try:
            hook(event)
        except Exception:
            logger.exception("ws_guard on_close hook raised; the connection is unaffected")

    def report_storage_error(self, exc: BaseException, what: str) -> bool:
        """Count a failed storage or key-server call; True when the policy allows.

        Logged at most once per ``storage_error_log_interval`` seconds, so an
        outage does not flood the log. The caller applies the answer: admit
        (fail open) or close with 1013 ``storage_unavailable`` (fail closed).
        """
        self.metrics.storage_errors += 1
        now = time.monotonic()
        if now - self._last_storage_log >= self.storage_error_log_interval:
            self._last_storage_log = now
            logger.warning(
                "ws_guard %s failed (%s: %s); policy on_storage_error=%s",
                what,
                type(exc).__name__,
                exc,
                self.on_storage_error,
                extra={"ws_storage_error": type(exc).__name__},
            )
        return self.on_storage_error == "allow"

    def http_denial(self, close: Close) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Status and headers for the opt-in HTTP denial of a handshake."""
        if close.code in (TRY_AGAIN_LATER, SERVICE_RESTART):
            status = 503
        elif close.reason in _RATE_REASONS:
            status = 429
        else:
            status = 403
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        if close.retry_after is not None:
            if close.jittered:
                # A load or drain hint: keep its spread in whole seconds.
                value = http_retry_after(close.retry_after, self.random)
            else:
                # The time until a rate window reopens: never early.
                value = str(max(0, math.ceil(close.retry_after)))
            headers.append((b"retry-after", value.encode()))
        return status, headers


#: At most this many distinct unsendable app close codes are warned about per guard.
_MAX_WARNED_CODES = 64


def _under(path: str, prefix: str) -> bool:
    """*path* is *prefix* or lies below it, on a segment boundary."""
    return path == prefix or path.startswith(prefix if prefix.endswith("/") else prefix + "/")


def _below_root(path: str, prefix: str) -> bool:
    """*prefix* occurs in *path* past its start, on segment boundaries (``/api/ws`` vs ``/ws``)."""
    start = path.find(prefix, 1)
    while start > 0:
        end = start + len(prefix)
        if prefix.endswith("/") or end == len(path) or path[end] == "/":
            return True
        start = path.find(prefix, start + 1)
    return False


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


def _check_paths(paths: Sequence[str] | None) -> tuple[str, ...] | None:
    if paths is None:
        return None
    if isinstance(paths, str):
        raise ConfigurationError(f"paths must be a list of prefixes, not the string {paths!r}")
    checked = tuple(paths)
    if not checked:
        # An empty list read from an unset setting must not switch protection off.
        raise ConfigurationError(
            f"paths must name at least one prefix, not {paths!r}; "
            "leave paths=None (the default) to guard every WebSocket path"
        )
    for path in checked:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(f"paths entries must start with '/', not {path!r}")
        # A route path carries no query, fragment or surrounding blanks: such a
        # prefix would never match, and its endpoint would go unguarded.
        if path != path.strip() or "?" in path or "#" in path:
            raise ConfigurationError(
                f"paths entries are route paths without blanks, '?' or '#', not {path!r}"
            )
    return checked
