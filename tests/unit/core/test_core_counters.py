"""Counters are exact after scripted sequences; the on_close hook sees every close."""

from __future__ import annotations

import json
import logging

import pytest

from tests.support.apps import Recorder, crash_after_first_message, echo
from tests.support.helpers import Deny, FixedRandom
from ws_guard import CloseEvent, Guard, WSGuardMiddleware, load, rules
from ws_guard.metrics.snapshot import DURATION_BUCKETS, Metrics
from ws_guard.testing import ScriptedWebSocket


async def open_ws(middleware: WSGuardMiddleware, **kwargs: object) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(middleware, **kwargs)  # type: ignore[arg-type]
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def test_counters_after_a_scripted_sequence() -> None:
    events: list[CloseEvent] = []
    guard = Guard(
        rules=[rules.MaxMessageSize(4), rules.Content(lambda p: p != "bad", name="no_bad")],
        load=[load.ConnectionCount(limit=3)],
        on_close=events.append,
        random_source=FixedRandom(0.0),
    )
    app = WSGuardMiddleware(echo, guard=guard)

    a = await open_ws(app, client=("198.51.100.1", 1))
    b = await open_ws(app)
    c = await open_ws(app)
    snap = guard.metrics.snapshot()
    assert (snap.active_connections, snap.peak_connections, snap.handshakes_admitted) == (3, 3, 3)

    shed = ScriptedWebSocket(app)  # the fourth is shed with 1013
    await shed.connect()
    await shed.finished()

    await a.send_text("toolong")
    await a.expect("websocket.close", code=1009)
    await a.finished()
    await b.send_text("bad")
    await b.expect("websocket.close", code=1008, reason="content:no_bad")
    await b.finished()
    await c.disconnect(1001)
    await c.finished()

    d = await open_ws(app)
    await d.disconnect(1000)
    await d.finished()

    crash = await open_ws(WSGuardMiddleware(crash_after_first_message, guard=guard))
    await crash.send_text("x")
    await crash.expect("websocket.close", code=1011)
    with pytest.raises(RuntimeError):
        await crash.finished()

    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_code) == {1013: 1, 1009: 1, 1008: 1, 1001: 1, 1000: 1, 1011: 1}
    assert dict(snap.closes_by_rule) == {
        "overloaded": 1,
        "message_too_big": 1,
        "content:no_bad": 1,
        "internal_error": 1,
    }
    assert dict(snap.closes_by_initiator) == {"guard": 3, "client": 2, "app": 1}
    assert (snap.handshakes_admitted, snap.handshakes_rejected) == (5, 1)
    assert (snap.active_connections, snap.peak_connections) == (0, 3)
    assert snap.dropped_sends == 0
    assert snap.storage_errors == 0
    assert dict(snap.shadow_breaches_by_rule) == {}
    # Five admitted connections finished, all within the first bucket (<= 0.1 s).
    assert snap.durations.total == 5
    assert snap.durations.counts[0] == 5
    assert 0 <= snap.durations.sum < 0.5
    assert snap.durations.buckets == DURATION_BUCKETS

    assert [(e.code, e.initiator, e.rule) for e in events] == [
        (1013, "guard", "overloaded"),
        (1009, "guard", "message_too_big"),
        (1008, "guard", "content:no_bad"),
        (1001, "client", None),
        (1000, "client", None),
        (1011, "app", "internal_error"),
    ]
    assert events[0].reason == "overloaded; retry-after=1"
    assert events[0].duration == 0.0  # never opened
    assert events[1].client_ip == "198.51.100.1"
    assert all(not e.shadow and len(e.connection_id) == 32 for e in events)


async def test_shadow_breach_reaches_the_hook_as_shadow() -> None:
    events: list[CloseEvent] = []
    guard = Guard(rules=[rules.MaxMessageSize(1, enforce=False)], on_close=events.append)
    ws = await open_ws(WSGuardMiddleware(echo, guard=guard))
    await ws.send_text("xx")
    await ws.expect("websocket.send", text="xx")
    await ws.disconnect()
    await ws.finished()
    assert [(e.code, e.rule, e.shadow, e.initiator) for e in events] == [
        (1009, "message_too_big", True, "guard"),
        (1000, None, False, "client"),
    ]


async def test_raising_hook_is_logged_and_connection_unaffected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def hook(event: CloseEvent) -> None:
        raise ValueError("hook bug")

    app = Recorder()
    guard = Guard(rules=[rules.MaxMessageSize(2)], on_close=hook)
    ws = await open_ws(WSGuardMiddleware(app, guard=guard))
    await ws.send_text("abc")
    await ws.expect("websocket.close", code=1009, reason="message_too_big")
    await ws.finished()
    assert app.received[-1]["code"] == 1009
    assert dict(guard.metrics.snapshot().closes_by_code) == {1009: 1}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "on_close hook raised" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ValueError


async def test_rejected_handshakes_counted_in_http_mode() -> None:
    guard = Guard(rules=[Deny(1008, "rate_limited", 2)], reject="http")
    for _ in range(3):
        ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
        await ws.connect()
        await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.handshakes_rejected == 3
    assert dict(snap.closes_by_rule) == {"rate_limited": 3}
    assert snap.durations.total == 0


async def test_dropped_sends_count() -> None:
    app = Recorder(after_disconnect=({"type": "websocket.send", "text": "late"},))
    guard = Guard(rules=[rules.MessageTypes(binary=False)])
    ws = await open_ws(WSGuardMiddleware(app, guard=guard))
    await ws.send_bytes(b"x")
    await ws.expect("websocket.close", code=1003)
    await ws.finished()
    assert guard.metrics.snapshot().dropped_sends == 1


def test_duration_histogram_buckets() -> None:
    metrics = Metrics()
    for duration in (0.05, 0.1, 0.3, 2.0, 7200.0):
        metrics.connection_opened()
        metrics.connection_finished(duration)
    snap = metrics.snapshot()
    counts = dict(zip(snap.durations.buckets, snap.durations.counts, strict=True))
    assert counts[0.1] == 2  # upper bounds are inclusive
    assert counts[0.5] == 1
    assert counts[5.0] == 1
    assert counts[float("inf")] == 1
    assert snap.durations.total == 5
    assert snap.durations.sum == pytest.approx(7202.45)
    assert (snap.active_connections, snap.peak_connections) == (0, 1)


def test_snapshot_is_a_frozen_copy_and_json_ready() -> None:
    metrics = Metrics()
    metrics.record_close(1008, "guard", "rate_limited")
    metrics.record_shadow("message_too_big")
    snap = metrics.snapshot()
    metrics.record_close(1008, "guard", "rate_limited")
    assert dict(snap.closes_by_code) == {1008: 1}  # later counts do not leak in
    with pytest.raises(TypeError):
        snap.closes_by_code[1008] = 5  # type: ignore[index]
    with pytest.raises(AttributeError):
        snap.dropped_sends = 1  # type: ignore[misc]
    data = snap.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["closes_by_code"] == {"1008": 1}
    assert data["shadow_breaches_by_rule"] == {"message_too_big": 1}
    assert data["durations"]["buckets"][-1] == "+Inf"
    assert data["gauges"] == []


async def test_gauge_readings_in_snapshot_as_dict() -> None:
    guard = Guard(load=[load.ConnectionCount(limit=10, name="conns")])
    ws = await open_ws(WSGuardMiddleware(echo, guard=guard))
    data = guard.metrics.snapshot().as_dict()
    assert data["gauges"] == [
        {
            "name": "conns",
            "value": 1.0,
            "limit": 10.0,
            "tripped": False,
            "sheds": 0,
            "shadow_sheds": 0,
            "open_sheds": 0,
        }
    ]
    await ws.disconnect()
    await ws.finished()
