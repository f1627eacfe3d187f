"""OpenTelemetry view of a guard's counters (extra ``ws-guard[otel]``).

:func:`instrument` registers *observable* instruments whose callbacks read
``guard.metrics.snapshot()`` when the SDK collects, so nothing is counted
twice and the message path is untouched.

OpenTelemetry has no observable histogram (histograms are recorded
synchronously), so the connection-duration histogram is exported as the
counter ``ws_guard.connections.finished`` split by a ``duration_bucket``
attribute (non-cumulative: connections whose duration fell in
``(previous bound, bound]``) plus the counter ``ws_guard.connections.duration``
holding the sum of durations in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "ws_guard.metrics.otel needs opentelemetry-api: pip install 'ws-guard[otel]'"
    ) from exc

from ws_guard.metrics.snapshot import EVENT_LOOP_LAG_GAUGE, MetricsSnapshot

if TYPE_CHECKING:
    from ws_guard._core.guard import Guard

__all__ = ["EVENT_LOOP_LAG_GAUGE", "GuardInstruments", "instrument"]


Reader = Callable[[MetricsSnapshot], Iterable[Observation]]


@dataclass(frozen=True, slots=True)
class GuardInstruments:
    """The instruments :func:`instrument` created, by name (kept for reference)."""

    meter_name: str
    instruments: tuple[object, ...]


def instrument(guard: Guard, meter_provider: MeterProvider | None = None) -> GuardInstruments:
    """Register observable instruments over *guard*'s counters.

    Uses *meter_provider*, or the globally configured one (a no-op until the
    application installs an SDK ``MeterProvider``). Call it once per guard.
    """
    provider = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
    meter = provider.get_meter("ws_guard")
    snapshot = guard.metrics.snapshot

    def callback(read: Reader) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return list(read(snapshot()))

        return observe

    counters: list[tuple[str, str, str, Reader]] = [
        ("ws_guard.closes", "{close}", "WebSocket closes by code, rule and initiator.", _closes),
        ("ws_guard.shadow_breaches", "{breach}", "Breaches in shadow mode, by rule.", _shadow),
        ("ws_guard.handshakes", "{handshake}", "Handshakes by admission outcome.", _handshakes),
        (
            "ws_guard.dropped_sends",
            "{message}",
            "App sends dropped after a guard close.",
            lambda s: [Observation(s.dropped_sends)],
        ),
        (
            "ws_guard.storage_errors",
            "{error}",
            "Failed storage or key-server calls.",
            lambda s: [Observation(s.storage_errors)],
        ),
        (
            "ws_guard.disconnects",
            "{connection}",
            "Connections closed on guard.disconnect() or guard.revoke().",
            lambda s: [Observation(s.disconnects)],
        ),
        (
            "ws_guard.revocations",
            "{revocation}",
            "guard.revoke() calls.",
            lambda s: [Observation(s.revocations)],
        ),
        (
            "ws_guard.bans",
            "{ban}",
            "Bans rules.AutoBan imposed.",
            lambda s: [Observation(s.bans)],
        ),
        ("ws_guard.load.sheds", "{handshake}", "Handshakes refused by load gauges.", _sheds),
        (
            "ws_guard.load.open_sheds",
            "{connection}",
            "Open connections closed because an overload lasted.",
            _open_sheds,
        ),
        (
            "ws_guard.connections.finished",
            "{connection}",
            "Finished connections by duration bucket (non-cumulative).",
            _finished,
        ),
        (
            "ws_guard.connections.duration",
            "s",
            "Total time finished connections stayed open.",
            lambda s: [Observation(s.durations.sum)],
        ),
    ]
    gauges: list[tuple[str, str, str, Reader]] = [
        (
            "ws_guard.connections.peak",
            "{connection}",
            "Most guarded connections open at once.",
            lambda s: [Observation(s.peak_connections)],
        ),
        (
            "ws_guard.connections.pending_auth",
            "{connection}",
            "Connections admitted without a token, waiting for their first message.",
            lambda s: [Observation(s.pending_auth)],
        ),
        (
            "ws_guard.revocations.in_force",
            "{revocation}",
            "Revoked token ids and subjects whose revocation has not expired.",
            lambda s: [Observation(s.revocations_in_force)],
        ),
        (
            "ws_guard.bans.in_force",
            "{ban}",
            "Keys banned by rules.AutoBan now (shadow bans included).",
            lambda s: [Observation(s.bans_in_force)],
        ),
        ("ws_guard.load.value", "1", "Current reading of each load gauge.", _gauge_field("value")),
        ("ws_guard.load.limit", "1", "Configured limit of each load gauge.", _gauge_field("limit")),
        ("ws_guard.load.tripped", "1", "1 while a load gauge sheds.", _gauge_field("tripped")),
        ("ws_guard.event_loop.lag", "s", "Event-loop lag from the lag gauge.", _lag),
    ]
    created: list[object] = []
    for name, unit, description, read in counters:
        created.append(
            meter.create_observable_counter(
                name, [callback(read)], unit=unit, description=description
            )
        )
    for name, unit, description, read in gauges:
        created.append(
            meter.create_observable_gauge(
                name, [callback(read)], unit=unit, description=description
            )
        )
    created.append(
        meter.create_observable_up_down_counter(
            "ws_guard.connections",
            [callback(lambda s: [Observation(s.active_connections)])],
            unit="{connection}",
            description="Open guarded WebSocket connections.",
        )
    )
    return GuardInstruments("ws_guard", tuple(created))


def _closes(snap: MetricsSnapshot) -> Iterable[Observation]:
    for key, count in snap.closes.items():
        attributes: dict[str, str | int] = {"code": key.code, "initiator": key.initiator}
        if key.rule is not None:
            attributes["rule"] = key.rule
        yield Observation(count, attributes)


def _shadow(snap: MetricsSnapshot) -> Iterable[Observation]:
    for rule, count in snap.shadow_breaches_by_rule.items():
        yield Observation(count, {"rule": rule})


def _handshakes(snap: MetricsSnapshot) -> Iterable[Observation]:
    yield Observation(snap.handshakes_admitted, {"outcome": "admitted"})
    yield Observation(snap.handshakes_rejected, {"outcome": "rejected"})


def _sheds(snap: MetricsSnapshot) -> Iterable[Observation]:
    for reading in snap.gauges:
        yield Observation(reading.sheds, {"gauge": reading.name, "mode": "enforced"})
        yield Observation(reading.shadow_sheds, {"gauge": reading.name, "mode": "shadow"})


def _open_sheds(snap: MetricsSnapshot) -> Iterable[Observation]:
    for reading in snap.gauges:
        yield Observation(reading.open_sheds, {"gauge": reading.name})


def _finished(snap: MetricsSnapshot) -> Iterable[Observation]:
    hist = snap.durations
    for bound, count in zip(hist.buckets, hist.counts, strict=True):
        yield Observation(count, {"duration_bucket": bucket_label(bound)})


def _gauge_field(name: str) -> Reader:
    def read(snap: MetricsSnapshot) -> Iterable[Observation]:
        for reading in snap.gauges:
            yield Observation(float(getattr(reading, name)), {"gauge": reading.name})

    return read


def _lag(snap: MetricsSnapshot) -> Iterable[Observation]:
    reading = snap.gauge(EVENT_LOOP_LAG_GAUGE)
    if reading is not None:
        yield Observation(reading.value)


def bucket_label(bound: float) -> str:
    """The ``duration_bucket`` attribute for a bucket's upper bound."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))
