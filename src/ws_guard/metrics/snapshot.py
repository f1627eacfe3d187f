"""Plain counters owned by the guard, and the frozen snapshot users read.

Counting is a dict increment on the close path and nothing on the message
path, so it never shows up in the echo benchmark. Prometheus and
OpenTelemetry are views over these same numbers, read at scrape time.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

#: Upper bounds (seconds) of the connection-duration histogram buckets.
DURATION_BUCKETS: tuple[float, ...] = (
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, float("inf"),
)  # fmt: skip

INITIATORS = ("guard", "app", "client", "server")

#: The default name of ``load.EventLoopLag``; the gauge by this name is also
#: exported on its own (``ws_guard_event_loop_lag_seconds``,
#: ``ws_guard.event_loop.lag``).
EVENT_LOOP_LAG_GAUGE = "event_loop_lag"


class CloseKey(NamedTuple):
    """One kind of close: the joint key the per-code/rule/initiator counts add up from."""

    code: int
    rule: str | None
    initiator: str


@dataclass(frozen=True, slots=True)
class GaugeReading:
    """One load gauge at snapshot time."""

    name: str
    value: float
    limit: float
    tripped: bool
    sheds: int
    shadow_sheds: int
    #: Open connections closed because the overload lasted (``ShedOpen``).
    open_sheds: int = 0


@dataclass(frozen=True, slots=True)
class DurationHistogram:
    """Cumulative-free bucket counts; ``counts[i]`` falls in ``(buckets[i-1], buckets[i]]``."""

    buckets: tuple[float, ...]
    counts: tuple[int, ...]
    total: int
    sum: float


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A consistent copy of the guard's counters at one instant."""

    closes_by_code: Mapping[int, int]
    closes_by_rule: Mapping[str, int]
    closes_by_initiator: Mapping[str, int]
    shadow_breaches_by_rule: Mapping[str, int]
    handshakes_admitted: int
    handshakes_rejected: int
    active_connections: int
    peak_connections: int
    dropped_sends: int
    storage_errors: int
    #: Connections admitted without a token, waiting for a first message now
    #: (``rules.from_first_message``); part of ``active_connections``.
    pending_auth: int = 0
    gauges: tuple[GaugeReading, ...] = ()
    durations: DurationHistogram = field(
        default_factory=lambda: DurationHistogram(
            DURATION_BUCKETS, (0,) * len(DURATION_BUCKETS), 0, 0.0
        )
    )
    #: Closes by (code, rule, initiator) together, for labelled metrics.
    closes: Mapping[CloseKey, int] = field(default_factory=lambda: MappingProxyType({}))
    #: Wall-clock time (``time.time()``) the snapshot was taken.
    taken_at: float = 0.0
    #: Connections this process closed on ``guard.disconnect()`` or ``guard.revoke()``.
    disconnects: int = 0
    #: ``guard.revoke()`` calls in this process, and the revocations in force now.
    revocations: int = 0
    revocations_in_force: int = 0
    #: Bans ``rules.AutoBan`` imposed in this process, and the bans in force now
    #: (shadow ones included).
    bans: int = 0
    bans_in_force: int = 0

    def gauge(self, name: str) -> GaugeReading | None:
        """The reading of the load gauge called *name*, if the guard has one."""
        for reading in self.gauges:
            if reading.name == name:
                return reading
        return None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data.

        Integer keys become strings, the last bucket bound ``"+Inf"``, and a
        non-finite gauge reading ``None``, so ``json.dumps`` output parses in
        any browser.
        """
        return {
            "taken_at": self.taken_at,
            "closes_by_code": {str(k): v for k, v in self.closes_by_code.items()},
            "closes_by_rule": dict(self.closes_by_rule),
            "closes_by_initiator": dict(self.closes_by_initiator),
            "shadow_breaches_by_rule": dict(self.shadow_breaches_by_rule),
            "handshakes_admitted": self.handshakes_admitted,
            "handshakes_rejected": self.handshakes_rejected,
            "active_connections": self.active_connections,
            "pending_auth": self.pending_auth,
            "peak_connections": self.peak_connections,
            "dropped_sends": self.dropped_sends,
            "storage_errors": self.storage_errors,
            "disconnects": self.disconnects,
            "revocations": self.revocations,
            "revocations_in_force": self.revocations_in_force,
            "bans": self.bans,
            "bans_in_force": self.bans_in_force,
            "closes": [
                {"code": k.code, "rule": k.rule, "initiator": k.initiator, "count": v}
                for k, v in sorted(self.closes.items(), key=_close_sort_key)
            ],
            "gauges": [_gauge_dict(g) for g in self.gauges],
            "durations": {
                "buckets": ["+Inf" if b == float("inf") else b for b in self.durations.buckets],
                "counts": list(self.durations.counts),
                "total": self.durations.total,
                "sum": self.durations.sum,
            },
        }


def _close_sort_key(item: tuple[CloseKey, int]) -> tuple[int, str, str]:
    key = item[0]
    return key.code, key.rule or "", key.initiator


def _gauge_dict(reading: GaugeReading) -> dict[str, Any]:
    data = asdict(reading)
    for name in ("value", "limit"):
        if not math.isfinite(data[name]):
            data[name] = None
    return data


class Metrics:
    """Mutable counters; only the guard's own code writes them."""

    __slots__ = (
        "_bans_reader",
        "_duration_counts",
        "_duration_sum",
        "_gauge_reader",
        "_revocations_reader",
        "active_connections",
        "bans",
        "closes",
        "closes_by_code",
        "closes_by_initiator",
        "closes_by_rule",
        "disconnects",
        "dropped_sends",
        "handshakes_admitted",
        "handshakes_rejected",
        "peak_connections",
        "pending_auth",
        "revocations",
        "shadow_breaches_by_rule",
        "storage_errors",
    )

    def __init__(self) -> None:
        self.closes: dict[CloseKey, int] = {}
        self.closes_by_code: dict[int, int] = {}
        self.closes_by_rule: dict[str, int] = {}
        self.closes_by_initiator: dict[str, int] = {}
        self.shadow_breaches_by_rule: dict[str, int] = {}
        self.handshakes_admitted = 0
        self.handshakes_rejected = 0
        self.active_connections = 0
        self.peak_connections = 0
        self.pending_auth = 0
        self.dropped_sends = 0
        self.storage_errors = 0
        self.disconnects = 0
        self.revocations = 0
        self.bans = 0
        self._revocations_reader: Callable[[], int] = int
        self._bans_reader: Callable[[], int] = int
        self._duration_counts = [0] * len(DURATION_BUCKETS)
        self._duration_sum = 0.0
        self._gauge_reader: Callable[[], tuple[GaugeReading, ...]] = tuple

    def set_gauge_reader(self, reader: Callable[[], tuple[GaugeReading, ...]]) -> None:
        self._gauge_reader = reader

    def set_control_readers(self, revocations: Callable[[], int], bans: Callable[[], int]) -> None:
        """How many revocations and bans are in force (read at snapshot time)."""
        self._revocations_reader = revocations
        self._bans_reader = bans

    def connection_opened(self) -> None:
        self.handshakes_admitted += 1
        self.active_connections += 1
        if self.active_connections > self.peak_connections:
            self.peak_connections = self.active_connections

    def connection_finished(self, duration: float) -> None:
        self.active_connections -= 1
        self._duration_counts[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self._duration_sum += duration

    def record_close(self, code: int, initiator: str, rule: str | None = None) -> None:
        key = CloseKey(code, rule, initiator)
        self.closes[key] = self.closes.get(key, 0) + 1
        self.closes_by_code[code] = self.closes_by_code.get(code, 0) + 1
        self.closes_by_initiator[initiator] = self.closes_by_initiator.get(initiator, 0) + 1
        if rule is not None:
            self.closes_by_rule[rule] = self.closes_by_rule.get(rule, 0) + 1

    def record_shadow(self, rule: str) -> None:
        self.shadow_breaches_by_rule[rule] = self.shadow_breaches_by_rule.get(rule, 0) + 1

    def snapshot(self) -> MetricsSnapshot:
        """Copy every counter; cheap, synchronous, safe from any task.

        The cost grows with the number of distinct codes, rules and gauges,
        never with the number of open connections.
        """
        counts = tuple(self._duration_counts)
        return MetricsSnapshot(
            closes_by_code=MappingProxyType(dict(self.closes_by_code)),
            closes_by_rule=MappingProxyType(dict(self.closes_by_rule)),
            closes_by_initiator=MappingProxyType(dict(self.closes_by_initiator)),
            shadow_breaches_by_rule=MappingProxyType(dict(self.shadow_breaches_by_rule)),
            handshakes_admitted=self.handshakes_admitted,
            handshakes_rejected=self.handshakes_rejected,
            active_connections=self.active_connections,
            peak_connections=self.peak_connections,
            dropped_sends=self.dropped_sends,
            storage_errors=self.storage_errors,
            pending_auth=self.pending_auth,
            gauges=self._gauge_reader(),
            durations=DurationHistogram(DURATION_BUCKETS, counts, sum(counts), self._duration_sum),
            closes=MappingProxyType(dict(self.closes)),
            taken_at=time.time(),
            disconnects=self.disconnects,
            revocations=self.revocations,
            revocations_in_force=self._revocations_reader(),
            bans=self.bans,
            bans_in_force=self._bans_reader(),
        )
