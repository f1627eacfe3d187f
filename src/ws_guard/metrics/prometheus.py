"""Prometheus view of a guard's counters (extra ``ws-guard[prometheus]``).

:class:`GuardCollector` is a custom collector: at scrape time it takes one
:meth:`~ws_guard.Guard.metrics` snapshot and turns it into metric families.
Nothing is counted twice and nothing lives in prometheus_client's global
``REGISTRY`` unless the user registers the collector there.

Labels are bounded by configuration (close codes, rule and gauge names),
never by clients: no IP, user or path labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

try:
    from prometheus_client.asgi import make_asgi_app as make_asgi_app  # for ._apps
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import CollectorRegistry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ws_guard.metrics.prometheus needs prometheus-client: pip install 'ws-guard[prometheus]'"
    ) from exc

from ws_guard.metrics.snapshot import EVENT_LOOP_LAG_GAUGE, MetricsSnapshot

if TYPE_CHECKING:
    from ws_guard._core.guard import Guard

__all__ = ["EVENT_LOOP_LAG_GAUGE", "GuardCollector", "families", "make_registry"]


class GuardCollector:
    """Reads one guard's counters at every scrape; register it on your registry.

    >>> registry = CollectorRegistry()          # doctest: +SKIP
    >>> registry.register(GuardCollector(guard))  # doctest: +SKIP
    """

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def __repr__(self) -> str:
        return f"GuardCollector({self.guard!r})"

    def collect(self) -> Iterable[Metric]:
        return families(self.guard.metrics.snapshot())

    def describe(self) -> Iterable[Metric]:
        """Names only, so a second collector on the same registry is refused."""
        return families(_EMPTY, describe=True)


def make_registry(guard: Guard) -> CollectorRegistry:
    """A fresh registry holding only *guard*'s collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GuardCollector(guard))
    return registry


def families(snap: MetricsSnapshot, *, describe: bool = False) -> list[Metric]:
    """The metric families for one snapshot.

    *describe* also yields the event-loop-lag family when no such gauge
    exists, so registration reserves every name the collector may produce.
    """
    return list(_families(snap, describe))


def _families(snap: MetricsSnapshot, describe: bool) -> Iterator[Metric]:
    closes = CounterMetricFamily(
        "ws_guard_closes",
        "WebSocket closes counted by ws_guard, by close code, rule and initiator.",
        labels=("code", "rule", "initiator"),
    )
    for key, count in sorted(snap.closes.items(), key=lambda kv: (kv[0].code, kv[0].rule or "")):
        closes.add_metric((str(key.code), key.rule or "", key.initiator), count)
    yield closes

    shadow = CounterMetricFamily(
        "ws_guard_shadow_breaches",
        "Breaches by rules and gauges in shadow mode (counted, connection kept).",
        labels=("rule",),
    )
    for rule, count in sorted(snap.shadow_breaches_by_rule.items()):
        shadow.add_metric((rule,), count)
    yield shadow

    handshakes = CounterMetricFamily(
        "ws_guard_handshakes",
        "WebSocket handshakes on guarded paths, by admission outcome.",
        labels=("outcome",),
    )
    handshakes.add_metric(("admitted",), snap.handshakes_admitted)
    handshakes.add_metric(("rejected",), snap.handshakes_rejected)
    yield handshakes

    yield _gauge(
        "ws_guard_connections", "Open guarded WebSocket connections.", snap.active_connections
    )
    yield _gauge(
        "ws_guard_pending_auth",
        "Connections admitted without a token, waiting for their first message.",
        snap.pending_auth,
    )
    yield _gauge(
        "ws_guard_connections_peak",
        "Most guarded connections open at once since the process started.",
        snap.peak_connections,
    )
    yield _counter(
        "ws_guard_dropped_sends",
        "Application sends dropped because ws_guard had already closed the connection.",
        snap.dropped_sends,
    )
    yield _counter(
        "ws_guard_storage_errors",
        "Failed calls to the rate-limit storage or key server.",
        snap.storage_errors,
    )
    yield _counter(
        "ws_guard_disconnects",
        "Connections closed on guard.disconnect() or guard.revoke() in this process.",
        snap.disconnects,
    )
    yield _counter(
        "ws_guard_revocations",
        "guard.revoke() calls in this process.",
        snap.revocations,
    )
    yield _gauge(
        "ws_guard_revocations_in_force",
        "Revoked token ids and subjects whose revocation has not expired.",
        snap.revocations_in_force,
    )
    yield _counter("ws_guard_bans", "Bans rules.AutoBan imposed in this process.", snap.bans)
    yield _gauge(
        "ws_guard_bans_in_force",
        "Keys banned by rules.AutoBan now (shadow bans included).",
        snap.bans_in_force,
    )

    value = GaugeMetricFamily(
        "ws_guard_load_value", "Current reading of each load gauge.", labels=("gauge",)
    )
    limit = GaugeMetricFamily(
        "ws_guard_load_limit", "Configured limit of each load gauge.", labels=("gauge",)
    )
    tripped = GaugeMetricFamily(
        "ws_guard_load_tripped",
        "1 while a load gauge is past its limit and sheds new connections.",
        labels=("gauge",),
    )
    sheds = CounterMetricFamily(
        "ws_guard_load_sheds",
        "Handshakes a load gauge refused with 1013 (mode=shadow: would have refused).",
        labels=("gauge", "mode"),
    )
    open_sheds = CounterMetricFamily(
        "ws_guard_load_open_sheds",
        "Open connections closed with 1013 because an overload lasted (load.ShedOpen).",
        labels=("gauge",),
    )
    lag = GaugeMetricFamily(
        "ws_guard_event_loop_lag_seconds",
        f"Event-loop lag measured by the {EVENT_LOOP_LAG_GAUGE!r} load gauge.",
        labels=(),
    )
    for reading in snap.gauges:
        labels = (reading.name,)
        value.add_metric(labels, reading.value)
        limit.add_metric(labels, reading.limit)
        tripped.add_metric(labels, 1.0 if reading.tripped else 0.0)
        sheds.add_metric((reading.name, "enforced"), reading.sheds)
        sheds.add_metric((reading.name, "shadow"), reading.shadow_sheds)
        open_sheds.add_metric(labels, reading.open_sheds)
        if reading.name == EVENT_LOOP_LAG_GAUGE:
            lag.add_metric((), reading.value)
    yield from (value, limit, tripped, sheds, open_sheds)
    if describe or lag.samples:
        yield lag

    hist = snap.durations
    durations = HistogramMetricFamily(
        "ws_guard_connection_duration_seconds",
        "How long admitted connections stayed open.",
        labels=(),
    )
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip(hist.buckets, hist.counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if math.isinf(bound) else repr(float(bound)), cumulative))
    durations.add_metric((), buckets, hist.sum)
    yield durations


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=())
    family.add_metric((), value)
    return family


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=())
    family.add_metric((), value)
    return family


_EMPTY = MetricsSnapshot(
    closes_by_code={},
    closes_by_rule={},
    closes_by_initiator={},
    shadow_breaches_by_rule={},
    handshakes_admitted=0,
    handshakes_rejected=0,
    active_connections=0,
    peak_connections=0,
    dropped_sends=0,
    storage_errors=0,
)
