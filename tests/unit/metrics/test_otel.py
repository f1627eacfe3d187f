"""The OpenTelemetry view: observed values equal the snapshot (SDK in-memory reader)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from tests.support.close_mix import EXPECTED, make_guard, run_mix
from ws_guard import Guard, MetricsSnapshot
from ws_guard.metrics.otel import bucket_label, instrument

Points = dict[tuple[str, frozenset[tuple[str, Any]]], float]


def collect(reader: InMemoryMetricReader) -> tuple[Points, dict[str, str]]:
    points: Points = {}
    units: dict[str, str] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "ws_guard"
            for metric in scope.metrics:
                units[metric.name] = metric.unit or ""
                for point in metric.data.data_points:
                    key = (metric.name, frozenset((point.attributes or {}).items()))
                    assert key not in points
                    points[key] = point.value  # type: ignore[union-attr]
    return points, units


def expected_points(snap: MetricsSnapshot) -> Points:
    out: Points = {}

    def put(name: str, value: float, **attributes: Any) -> None:
        out[(name, frozenset(attributes.items()))] = value

    for key, count in snap.closes.items():
        attrs: dict[str, Any] = {"code": key.code, "initiator": key.initiator}
        if key.rule is not None:
            attrs["rule"] = key.rule
        put("ws_guard.closes", count, **attrs)
    for rule, count in snap.shadow_breaches_by_rule.items():
        put("ws_guard.shadow_breaches", count, rule=rule)
    put("ws_guard.handshakes", snap.handshakes_admitted, outcome="admitted")
    put("ws_guard.handshakes", snap.handshakes_rejected, outcome="rejected")
    put("ws_guard.connections", snap.active_connections)
    put("ws_guard.connections.peak", snap.peak_connections)
    put("ws_guard.connections.pending_auth", snap.pending_auth)
    put("ws_guard.dropped_sends", snap.dropped_sends)
    put("ws_guard.storage_errors", snap.storage_errors)
    put("ws_guard.disconnects", snap.disconnects)
    put("ws_guard.revocations", snap.revocations)
    put("ws_guard.revocations.in_force", snap.revocations_in_force)
    put("ws_guard.bans", snap.bans)
    put("ws_guard.bans.in_force", snap.bans_in_force)
    for g in snap.gauges:
        put("ws_guard.load.value", g.value, gauge=g.name)
        put("ws_guard.load.limit", g.limit, gauge=g.name)
        put("ws_guard.load.tripped", float(g.tripped), gauge=g.name)
        put("ws_guard.load.sheds", g.sheds, gauge=g.name, mode="enforced")
        put("ws_guard.load.sheds", g.shadow_sheds, gauge=g.name, mode="shadow")
        put("ws_guard.load.open_sheds", g.open_sheds, gauge=g.name)
        if g.name == "event_loop_lag":
            put("ws_guard.event_loop.lag", g.value)
    for bound, count in zip(snap.durations.buckets, snap.durations.counts, strict=True):
        put("ws_guard.connections.finished", count, duration_bucket=bucket_label(bound))
    put("ws_guard.connections.duration", snap.durations.sum)
    return out


async def test_otel_values_equal_the_snapshot() -> None:
    guard, lag = make_guard()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrument(guard, meter_provider=provider)
    await run_mix(guard, lag)
    lag.current = 0.2
    points, units = collect(reader)
    snap = guard.metrics.snapshot()
    assert points == expected_points(snap)
    shed = frozenset({("code", 1013), ("rule", "overloaded"), ("initiator", "guard")})
    assert points[("ws_guard.closes", shed)] == 1
    assert points[("ws_guard.dropped_sends", frozenset())] == EXPECTED["dropped_sends"]
    assert points[("ws_guard.event_loop.lag", frozenset())] == 0.2
    finished = sum(v for (name, _), v in points.items() if name == "ws_guard.connections.finished")
    assert finished == 9
    assert units["ws_guard.event_loop.lag"] == "s"
    assert units["ws_guard.connections.duration"] == "s"
    provider.shutdown()


async def test_otel_follows_the_counters_between_collections() -> None:
    guard, lag = make_guard()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrument(guard, meter_provider=provider)
    first, _ = collect(reader)
    assert first[("ws_guard.handshakes", frozenset({("outcome", "admitted")}))] == 0
    assert not any(name == "ws_guard.closes" for name, _ in first)
    assert first[("ws_guard.event_loop.lag", frozenset())] == 0.0
    await run_mix(guard, lag)
    second, _ = collect(reader)
    assert second == expected_points(guard.metrics.snapshot())
    provider.shutdown()


def test_two_guards_on_two_providers_stay_apart() -> None:
    readers = [InMemoryMetricReader(), InMemoryMetricReader()]
    providers = [MeterProvider(metric_readers=[r]) for r in readers]
    guards = [Guard(), Guard()]
    for guard, provider in zip(guards, providers, strict=True):
        instrument(guard, meter_provider=provider)
    guards[0].metrics.record_close(1000, "client")
    a, _ = collect(readers[0])
    b, _ = collect(readers[1])
    assert a[("ws_guard.closes", frozenset({("code", 1000), ("initiator", "client")}))] == 1
    assert not any(name == "ws_guard.closes" for name, _ in b)
    for provider in providers:
        provider.shutdown()
