"""The Prometheus view: exposition equals the snapshot, registries stay apart, scrapes are cheap."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import prometheus_client
import pytest
import websockets
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.support.apps import echo
from tests.support.close_mix import EXPECTED, make_guard, run_mix
from tests.support.servers import serve
from ws_guard import Guard, MetricsSnapshot, WSGuardMiddleware, load, metrics_app, rules
from ws_guard.metrics.prometheus import GuardCollector, make_registry
from ws_guard.testing import ScriptedWebSocket

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def expected_samples(snap: MetricsSnapshot) -> Samples:
    """What the exposition must hold for *snap*, written independently of the collector."""
    out: Samples = {}

    def put(name: str, value: float, **labels: str) -> None:
        out[(name, frozenset(labels.items()))] = value

    for key, count in snap.closes.items():
        put(
            "ws_guard_closes_total",
            count,
            code=str(key.code),
            rule=key.rule or "",
            initiator=key.initiator,
        )
    for rule, count in snap.shadow_breaches_by_rule.items():
        put("ws_guard_shadow_breaches_total", count, rule=rule)
    put("ws_guard_handshakes_total", snap.handshakes_admitted, outcome="admitted")
    put("ws_guard_handshakes_total", snap.handshakes_rejected, outcome="rejected")
    put("ws_guard_connections", snap.active_connections)
    put("ws_guard_connections_peak", snap.peak_connections)
    put("ws_guard_pending_auth", snap.pending_auth)
    put("ws_guard_dropped_sends_total", snap.dropped_sends)
    put("ws_guard_storage_errors_total", snap.storage_errors)
    put("ws_guard_disconnects_total", snap.disconnects)
    put("ws_guard_revocations_total", snap.revocations)
    put("ws_guard_revocations_in_force", snap.revocations_in_force)
    put("ws_guard_bans_total", snap.bans)
    put("ws_guard_bans_in_force", snap.bans_in_force)
    for g in snap.gauges:
        put("ws_guard_load_value", g.value, gauge=g.name)
        put("ws_guard_load_limit", g.limit, gauge=g.name)
        put("ws_guard_load_tripped", float(g.tripped), gauge=g.name)
        put("ws_guard_load_sheds_total", g.sheds, gauge=g.name, mode="enforced")
        put("ws_guard_load_sheds_total", g.shadow_sheds, gauge=g.name, mode="shadow")
        put("ws_guard_load_open_sheds_total", g.open_sheds, gauge=g.name)
        if g.name == "event_loop_lag":
            put("ws_guard_event_loop_lag_seconds", g.value)
    running = 0
    for bound, count in zip(snap.durations.buckets, snap.durations.counts, strict=True):
        running += count
        le = "+Inf" if bound == float("inf") else repr(bound)
        put("ws_guard_connection_duration_seconds_bucket", running, le=le)
    put("ws_guard_connection_duration_seconds_count", snap.durations.total)
    put("ws_guard_connection_duration_seconds_sum", snap.durations.sum)
    return out


async def test_exposition_equals_snapshot_after_mix_of_closes() -> None:
    guard, lag = make_guard()
    await run_mix(guard, lag)
    lag.current = 0.125
    samples = parse(generate_latest(make_registry(guard)).decode())
    snap = guard.metrics.snapshot()
    assert samples == expected_samples(snap)
    # And the numbers themselves, as the script produced them.
    closes = {
        (dict(labels)["code"], dict(labels)["rule"], dict(labels)["initiator"]): value
        for (name, labels), value in samples.items()
        if name == "ws_guard_closes_total"
    }
    assert closes == {
        (str(code), rule or "", initiator): count
        for (code, rule, initiator), count in EXPECTED["closes"].items()
    }
    one = frozenset[tuple[str, str]]()
    assert samples[("ws_guard_event_loop_lag_seconds", one)] == 0.125
    assert samples[("ws_guard_dropped_sends_total", one)] == 3
    assert samples[("ws_guard_connections_peak", one)] == 2
    assert samples[("ws_guard_connection_duration_seconds_count", one)] == 9
    shed = frozenset({("gauge", "connections"), ("mode", "enforced")})
    assert samples[("ws_guard_load_sheds_total", shed)] == 1


async def test_no_client_identifying_labels() -> None:
    guard, lag = make_guard()
    await run_mix(guard, lag)
    labels = {
        name
        for family in text_string_to_metric_families(generate_latest(make_registry(guard)).decode())
        for sample in family.samples
        for name in sample.labels
    }
    assert labels == {"code", "rule", "initiator", "outcome", "gauge", "mode", "le"}


def test_fresh_guard_exposes_every_family_and_no_lag_without_a_lag_gauge() -> None:
    guard = Guard(load=[load.ConnectionCount(limit=5)])
    samples = parse(generate_latest(make_registry(guard)).decode())
    names = {name for name, _ in samples}
    assert "ws_guard_event_loop_lag_seconds" not in names
    assert samples[("ws_guard_connections", frozenset())] == 0
    assert samples[("ws_guard_load_limit", frozenset({("gauge", "connections")}))] == 5


async def test_parallel_guards_on_their_own_registries_do_not_collide() -> None:
    (guard_a, lag_a), (guard_b, _) = make_guard(), make_guard()
    registry_a, registry_b = make_registry(guard_a), make_registry(guard_b)
    extra = make_guard()[0]
    registry_c = CollectorRegistry()
    registry_c.register(GuardCollector(extra))  # the same names again, on another registry

    async def only_a_client_close() -> None:
        ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard_b))
        await ws.connect()
        await ws.expect("websocket.accept")
        await ws.disconnect(1000)
        await ws.finished()

    await asyncio.gather(run_mix(guard_a, lag_a), only_a_client_close())
    a = parse(generate_latest(registry_a).decode())
    b = parse(generate_latest(registry_b).decode())
    c = parse(generate_latest(registry_c).decode())
    assert a == expected_samples(guard_a.metrics.snapshot())
    assert b == expected_samples(guard_b.metrics.snapshot())
    code_1000 = frozenset({("code", "1000"), ("rule", ""), ("initiator", "client")})
    assert a[("ws_guard_closes_total", code_1000)] == 3
    assert b[("ws_guard_closes_total", code_1000)] == 1
    assert ("ws_guard_closes_total", code_1000) not in c
    # Nothing leaked into prometheus_client's global registry.
    assert prometheus_client.REGISTRY.get_sample_value("ws_guard_connections") is None


def test_second_collector_on_one_registry_is_refused() -> None:
    registry = make_registry(Guard())
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(GuardCollector(Guard()))


# -- metrics_app -------------------------------------------------------------------------


async def _get(app: Any, path: str = "/metrics", **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(kwargs.pop("method", "GET"), path, **kwargs)


async def test_metrics_app_serves_a_fresh_registry() -> None:
    guard, lag = make_guard()
    await run_mix(guard, lag)
    app = metrics_app(guard)
    response = await _get(app)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert parse(response.text) == expected_samples(guard.metrics.snapshot())
    assert app.registry is not prometheus_client.REGISTRY
    assert (await _get(app, method="POST")).status_code == 405
    openmetrics = await _get(app, headers={"accept": "application/openmetrics-text"})
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


async def test_metrics_app_adds_the_guard_to_a_passed_registry() -> None:
    registry = CollectorRegistry()
    Counter("my_app_requests", "The app's own counter.", registry=registry).inc(7)
    guard = Guard()
    response = await _get(metrics_app(guard, registry=registry))
    samples = parse(response.text)
    assert samples[("my_app_requests_total", frozenset())] == 7
    assert samples[("ws_guard_connections", frozenset())] == 0


@pytest.mark.e2e
async def test_scrape_over_uvicorn_counts_real_closes() -> None:
    guard = Guard(rules=[rules.MaxMessageSize(8)], paths=["/ws"])

    async def ws_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(text)

    app = Starlette(
        routes=[WebSocketRoute("/ws", ws_endpoint), Route("/metrics", metrics_app(guard))]
    )
    with serve(WSGuardMiddleware(app, guard=guard)) as server:
        async with websockets.connect(server.url + "/ws") as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            async with httpx.AsyncClient() as client:
                during = parse((await client.get(server.http_url + "/metrics")).text)
            assert during[("ws_guard_connections", frozenset())] == 1
            await ws.send("much too long")
            with pytest.raises(websockets.ConnectionClosedError) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1009
        deadline = time.monotonic() + 5
        while guard.metrics.snapshot().active_connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient() as client:
            after = parse((await client.get(server.http_url + "/metrics")).text)
    key = frozenset({("code", "1009"), ("rule", "message_too_big"), ("initiator", "guard")})
    assert after[("ws_guard_closes_total", key)] == 1
    assert after[("ws_guard_connections", frozenset())] == 0
    assert after[("ws_guard_connection_duration_seconds_count", frozenset())] == 1


@pytest.mark.e2e
def test_metrics_app_runs_alone_under_uvicorn_with_lifespan() -> None:
    guard = Guard()
    with serve(metrics_app(guard)) as server:
        response = httpx.get(server.http_url + "/anything")
    assert response.status_code == 200
    assert ("ws_guard_connections", frozenset()) in parse(response.text)


# -- cost -------------------------------------------------------------------------------------


async def test_scrape_with_ten_thousand_open_connections_is_cheap() -> None:
    guard = Guard(
        rules=[rules.MaxMessageSize(1024), rules.MessageTypes(text=True, binary=False)],
        load=[load.ConnectionCount(limit=20_000)],
    )
    app = WSGuardMiddleware(echo, guard=guard)
    sockets = [ScriptedWebSocket(app) for _ in range(10_000)]
    for ws in sockets:
        await ws.connect()
    for ws in sockets:
        await ws.expect("websocket.accept")
    registry = make_registry(guard)
    try:
        assert len(guard.live_connections) == 10_000
        samples = parse(generate_latest(registry).decode())
        assert samples[("ws_guard_connections", frozenset())] == 10_000
        timings = []
        for _ in range(50):
            start = time.perf_counter()
            generate_latest(registry)
            timings.append(time.perf_counter() - start)
        median = statistics.median(timings)
        print(f"scrape with 10 000 open connections: median {median * 1e3:.3f} ms")
        assert median < 0.005
    finally:
        for ws in sockets:
            await ws.disconnect(1000)
        await asyncio.gather(*(ws.finished(timeout=30) for ws in sockets))
    assert guard.metrics.snapshot().closes_by_code == {1000: 10_000}
