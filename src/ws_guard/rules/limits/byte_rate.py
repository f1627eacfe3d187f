"""``ByteRate``: client bytes per key, else 1008 ``rate_limited; retry-after=<seconds>``.

The windows are ``MessageRate``'s (fixed windows opened by the first
message; on Redis, quota leased in the background; per tier with a
callable limit, :mod:`ws_guard.rules.limits.rate_rule`), spent by each
message's size instead of one: text in UTF-8 bytes, binary in bytes
(:func:`~ws_guard.rules.limits.byte_windows.payload_bytes`). A window admits
exactly ``limit`` bytes: a message is admitted only if all of it fits.

One message larger than the smallest limit can never pass, however long
the client waits, so it closes at once with 1009 ``message_too_big`` (no
retry hint), as ``MaxMessageSize`` would; a guard whose ``MaxMessageSize``
admits messages that ``ByteRate`` can never admit is refused at
construction. With a tier callable the limits are known only per tier: a
tier whose smallest limit is below the guard's ``MaxMessageSize`` is the
same mistake, found when the callable first returns it; that tier's
handshakes close 1011 ``internal_error`` with the error logged once, as a
raising tier callable does (docs/rate-limits.md, "ByteRate").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ws_guard._core.decisions import Close
from ws_guard._validate import check_count
from ws_guard.codes import (
    MESSAGE_TOO_BIG,
    POLICY_VIOLATION,
    REASON_MESSAGE_TOO_BIG,
    REASON_RATE_LIMITED,
)
from ws_guard.errors import ConfigurationError
from ws_guard.rules.auth.session import refresh_session
from ws_guard.rules.context import Checker
from ws_guard.rules.keys import KeyFunc, by_connection
from ws_guard.rules.limits.byte_windows import CostWindow, LeasedCostWindow, payload_bytes
from ws_guard.rules.limits.leases import STORAGE_DOWN
from ws_guard.rules.limits.rate_checks import Report, shared_windows
from ws_guard.rules.limits.rate_rule import RateRule, Rates
from ws_guard.rules.limits.tiers import rate_tier
from ws_guard.rules.limits.warning import Warner, check_warn_at, thresholds, warning_text
from ws_guard.rules.messages import MaxMessageSize
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

_INF = float("inf")
Window = CostWindow | LeasedCostWindow


class ByteRate(RateRule):
    """At most ``limit`` bytes per window, else 1008 ``rate_limited; retry-after=<seconds>``.

    ``limit`` is in ``limits`` syntax with the amount in bytes
    (``"1048576/minute"``, several rates joined by ``;``), or a callable of
    the connection's :class:`~ws_guard.ConnectionInfo` returning such a
    string, called once at admission (a tier:
    :mod:`ws_guard.rules.limits.tiers`). ``key`` as for ``MessageRate``:
    ``rules.by_connection`` (the default) counts each connection on its
    own; a shared key counts in memory, or on Redis in leases of at most
    ``lease`` bytes (default: a tenth of the limit). ``warn_at`` (a fraction
    in (0, 1)) sends one ``rate.warning`` per window
    (:mod:`ws_guard.rules.limits.warning`).

    Raises ``ConfigurationError`` for a bad limit, key, lease or warn_at,
    and at ``Guard(...)`` when a ``MaxMessageSize`` of the guard admits
    messages larger than the smallest fixed limit.
    """

    public_name = "ByteRate"
    storage_kind = "bytes"
    counted = CostWindow
    leased = LeasedCostWindow

    def __init__(
        self,
        limit: str | Sequence[str] | Any,
        key: KeyFunc = by_connection,
        *,
        lease: int | None = None,
        warn_at: float | None = None,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(enforce=enforce, name=name)
        limits = self._init_rates(limit)
        self.key = self._check_key(key)
        self.lease = None if lease is None else check_count("ByteRate lease", lease)
        self.warn_at = check_warn_at("ByteRate warn_at", warn_at)
        self.id = self._storage_id(name, limits)
        #: The smallest fixed limit (a message of more bytes can never pass); 0 with tiers.
        self.max_message = min((rate.limit for rate in self.rates), default=0)
        #: The largest message a ``MaxMessageSize`` of the guard lets through; 0 for none.
        self._size_cap = 0
        self._too_big = self.breach(MESSAGE_TOO_BIG, REASON_MESSAGE_TOO_BIG)

    def bind(self, guard: Runtime) -> None:
        super().bind(guard)
        sizes = [rule.max_bytes for rule in guard.rules if isinstance(rule, MaxMessageSize)]
        self._size_cap = max(sizes, default=0)
        if self.tiers is None and self._size_cap > self.max_message:
            raise ConfigurationError(self._too_small(self.max_message))

    def _too_small(self, smallest: int) -> str:
        return (
            f"{self!r} admits at most {smallest} bytes per window, but a MaxMessageSize "
            f"of the guard lets through messages up to {self._size_cap} bytes, which "
            f"could never pass; lower MaxMessageSize to at most {smallest} or raise "
            "the byte rate"
        )

    def _parse_tier(self, value: object) -> Rates:
        """A tier's rates, refused (1011 for its handshakes) when below ``MaxMessageSize``."""
        rates = rate_tier(value)
        smallest = min(rate.limit for rate in rates)
        if self._size_cap > smallest:
            raise ConfigurationError(self._too_small(smallest))
        return rates

    # -- the message check ------------------------------------------------------
    def checker(self, conn: RuleContext) -> Checker | None:
        rates = self._rates_of(conn)
        if rates is None:
            return None  # the tier callable failed in shadow mode: not limited here
        guard = self._runtime()
        if self.key is by_connection and len(rates) == 1:
            check = self._single_checker(conn, guard, rates)
        else:
            check = self._windows_checker(conn, guard, rates)
        # An in-band token refresh is consumed by the auth rule before any
        # rate sees it; its bytes count here too, before its signature is checked.
        session = refresh_session(conn)
        if session is not None:
            session.rates += (check,)
        return check

    @property
    def _warns(self) -> bool:
        """Only an enforcing rule warns: shadow mode changes nothing a client sees."""
        return self.warn_at is not None and self.enforce

    def _limited(self, retry: float | None = None) -> Close:
        return self.breach(POLICY_VIOLATION, REASON_RATE_LIMITED, retry)

    def _single_checker(self, conn: RuleContext, guard: Runtime, rates: Rates) -> Checker:
        """One rate per connection: the size, a clock read and three comparisons."""
        now = guard.scheduler.clock
        limit, window = rates[0].limit, rates[0].window
        report = Report(self._deny, self.enforce)
        too_big = self._too_big
        # Without warnings the threshold is never reached: one comparison
        # on the message path instead of a second closure to maintain.
        warn_from: float = _INF
        if self._warns:
            warn_from = thresholds(rates, self.warn_at or 0.0)[0]
        label = self.name or REASON_RATE_LIMITED
        quiet_until = -_INF
        end = -_INF
        count = 0

        def check(message: Message) -> Close | None:
            nonlocal end, count
            text = message.get("text")
            if text is not None:
                cost = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            else:
                data = message.get("bytes")
                cost = 0 if data is None else len(data)
            t = now()
            if t >= end:
                end = t + window
                count = 0
            total = count + cost
            if total <= limit:
                count = total
                if total >= warn_from and t >= quiet_until:  # once per window
                    warn(t)
                return None
            if cost > limit:
                return too_big
            return report(t, end - t, end)

        def warn(t: float) -> None:
            nonlocal quiet_until
            quiet_until = end
            conn.send_soon({"type": "websocket.send", "text": warning_text(label, end - t)})

        return check

    def _windows_checker(self, conn: RuleContext, guard: Runtime, rates: Rates) -> Checker:
        """Several rates or a shared key: every window spends the message's size."""
        clock = guard.scheduler.clock
        windows_at = self._windows_at(conn, rates)
        report = Report(self._deny, self.enforce)
        too_big = self._too_big
        largest = min(rate.limit for rate in rates)
        warner: Warner | None = None
        if self._warns:
            label = self.name or REASON_RATE_LIMITED
            warner = Warner(conn, label, thresholds(rates, self.warn_at or 0.0))

        def check(message: Message) -> Close | None:
            cost = payload_bytes(message)
            if cost > largest:
                return too_big  # never fits a window: counts in none
            t = clock()
            windows = windows_at(t)
            if windows is None or isinstance(windows, Close):
                return windows
            worst: float | None = None
            for window in windows:
                retry = window.take(t, cost)
                if retry is not None and worst != STORAGE_DOWN:
                    worst = retry if worst is None or retry == STORAGE_DOWN else max(worst, retry)
            if worst is None:
                if warner is not None:
                    warner.after(t, windows)
                return None
            return report(t, worst)

        return check

    def _windows_at(
        self, conn: RuleContext, rates: Rates
    ) -> Callable[[float], list[Window] | Close | None]:
        """The connection's windows at a time: its own, or its key's (looked up again when dead).

        ``None`` while the key is unknown; the rule's close when its key function failed.
        """
        maps = self._shared_maps(rates)
        if maps is None:
            own: list[Window] = [CostWindow(r.limit, r.window) for r in rates]
            return lambda t: own
        return shared_windows(conn, self._read_key, maps)
