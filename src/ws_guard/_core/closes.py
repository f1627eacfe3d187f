"""Close reporting: counting, logging and the ``on_close`` hook, for every close.

Also the two logs a client or an outage could flood, each throttled: shadow
breaches (at most one WARNING per rule per ``shadow_log_interval``) and
storage errors (one per ``storage_error_log_interval``), and the status and
headers of an opt-in HTTP denial.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ws_guard._core.decisions import Close, http_retry_after
from ws_guard._core.request import loggable_path
from ws_guard.codes import (
    INTERNAL_ERROR,
    REASON_CONNECT_RATE_LIMITED,
    REASON_RATE_LIMITED,
    REASON_TOO_MANY_CONNECTIONS,
    SERVICE_RESTART,
    TRY_AGAIN_LATER,
)

if TYPE_CHECKING:
    from ws_guard.metrics.snapshot import Metrics
    from ws_guard.rules.base import Rule
    from ws_guard.rules.context import RuleContext

logger = logging.getLogger("ws_guard")

_RATE_REASONS = frozenset(
    {REASON_RATE_LIMITED, REASON_CONNECT_RATE_LIMITED, REASON_TOO_MANY_CONNECTIONS}
)


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


class CloseReporter:
    """Counts, logs and reports the closes of one guard (``guard.reporter``; engine use).

    *clock* is the guard's (seconds) and paces the shadow-breach log; the
    storage-error log is paced in real (monotonic) seconds. *rng* jitters
    the ``Retry-After`` of an HTTP denial.
    """

    def __init__(
        self,
        metrics: Metrics,
        clock: Callable[[], float],
        on_close: OnClose | None,
        on_storage_error: str,
        rng: random.Random,
    ) -> None:
        self.metrics = metrics
        self.random = rng
        self.clock = clock
        self.on_close = on_close
        self.on_storage_error = on_storage_error
        #: Seconds between two storage-error WARNINGs.
        self.storage_error_log_interval = 5.0
        #: Seconds (guard clock) between two shadow-breach WARNINGs of one rule.
        self.shadow_log_interval = 5.0
        # Rule label -> (time of its last WARNING, breaches not logged since);
        # keyed by configured names only, so bounded by the configuration.
        self._shadow_logs: dict[str, tuple[float, int]] = {}
        #: App close codes already warned about (see warn_unsendable_code).
        self._unsendable_warned: set[int] = set()
        self._last_storage_log = float("-inf")
        #: Rules whose ``on_close`` hears of each guard close (set from the hook plan).
        self.close_rules: tuple[Rule, ...] = ()

    def record_close(
        self,
        conn: RuleContext,
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
        if close is not None and initiator == "guard":
            for watcher in self.close_rules:
                watcher.on_close(conn, close)
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

    def record_shadow(self, conn: RuleContext, close: Close) -> None:
        """Count a shadow breach; log it unless this rule logged one in the last interval.

        Every breach is counted and reaches ``on_close``; the WARNING is
        written at most once per ``shadow_log_interval`` seconds per rule, with
        the number left out since: a breach can be one tiny frame, and a log
        record per frame would let a client write the server's log at its
        own rate.
        """
        self.metrics.record_shadow(close.rule)
        now = self.clock()
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
        conn: RuleContext,
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
        """Status and headers for the opt-in HTTP denial of *close* (see :func:`http_denial`)."""
        return http_denial(close, self.random)


def http_denial(close: Close, rng: random.Random) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Status and headers for the opt-in HTTP denial of a handshake.

    503 for load and drain closes, 429 for rate and cap closes, 500 for a
    server fault (a rule's tier callable that failed), else 403;
    ``Retry-After`` in whole seconds (RFC 9110 section 10.2.3) when the close
    carries a hint.
    """
    if close.code in (TRY_AGAIN_LATER, SERVICE_RESTART):
        status = 503
    elif close.reason in _RATE_REASONS:
        status = 429
    elif close.code == INTERNAL_ERROR:
        status = 500  # the server's bug, not the client's: RFC 9110 section 15.6.1
    else:
        status = 403
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if close.retry_after is not None:
        if close.jittered:
            # A load or drain hint: keep its spread in whole seconds.
            value = http_retry_after(close.retry_after, rng)
        else:
            # The time until a rate window reopens: never early.
            value = str(max(0, math.ceil(close.retry_after)))
        headers.append((b"retry-after", value.encode()))
    return status, headers


#: At most this many distinct unsendable app close codes are warned about per guard.
_MAX_WARNED_CODES = 64
