"""The snapshot API and the on_close hook, driven in-process."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import FrozenInstanceError

import anyio
import pytest

from tests.support.apps import echo
from tests.support.backends import BACKENDS
from tests.support.close_mix import EXPECTED, chatty, make_guard, run_mix
from ws_guard import CloseEvent, CloseKey, Guard, MetricsSnapshot, WSGuardMiddleware, rules
from ws_guard.metrics.snapshot import DURATION_BUCKETS
from ws_guard.testing import ScriptedWebSocket


async def test_snapshot_after_mix_of_closes() -> None:
    guard, lag = make_guard()
    await run_mix(guard, lag)
    snap = guard.metrics.snapshot()
    for name in (
        "closes_by_code",
        "closes_by_rule",
        "closes_by_initiator",
        "shadow_breaches_by_rule",
        "handshakes_admitted",
        "handshakes_rejected",
        "active_connections",
        "peak_connections",
        "dropped_sends",
        "storage_errors",
    ):
        assert getattr(snap, name) == EXPECTED[name], name
    assert snap.closes == {CloseKey(*k): v for k, v in EXPECTED["closes"].items()}
    readings = [(g.name, g.value, g.limit, g.tripped, g.sheds, g.shadow_sheds) for g in snap.gauges]
    assert readings == EXPECTED["gauges"]
    assert snap.gauge("event_loop_lag") is snap.gauges[1]
    assert snap.gauge("missing") is None
    # Nine admitted connections, all finished within the test: all in the first bucket.
    assert snap.durations.buckets == DURATION_BUCKETS
    assert snap.durations.total == 9
    assert snap.durations.counts[0] == 9
    assert 0.0 <= snap.durations.sum < 9 * DURATION_BUCKETS[0]


async def test_snapshot_is_frozen_and_detached() -> None:
    guard, lag = make_guard()
    before = guard.metrics.snapshot()
    await run_mix(guard, lag)
    assert before.closes_by_code == {}
    assert before.handshakes_admitted == 0
    with pytest.raises(FrozenInstanceError):
        before.active_connections = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        before.closes_by_code[1000] = 1  # type: ignore[index]


async def test_marginal_counts_add_up_from_joint_counts() -> None:
    guard, lag = make_guard()
    await run_mix(guard, lag)
    snap = guard.metrics.snapshot()
    by_code: dict[int, int] = {}
    by_rule: dict[str, int] = {}
    for key, count in snap.closes.items():
        by_code[key.code] = by_code.get(key.code, 0) + count
        if key.rule is not None:
            by_rule[key.rule] = by_rule.get(key.rule, 0) + count
    assert by_code == snap.closes_by_code
    assert by_rule == snap.closes_by_rule


async def test_as_dict_round_trips_through_json() -> None:
    guard, lag = make_guard()
    await run_mix(guard, lag)
    snap = guard.metrics.snapshot()
    data = json.loads(json.dumps(snap.as_dict(), allow_nan=False))
    assert data["closes_by_code"] == {str(k): v for k, v in EXPECTED["closes_by_code"].items()}
    assert data["closes_by_rule"] == EXPECTED["closes_by_rule"]
    assert data["shadow_breaches_by_rule"] == EXPECTED["shadow_breaches_by_rule"]
    assert data["handshakes_admitted"] == 9
    assert data["active_connections"] == 0
    assert data["dropped_sends"] == 3
    assert {(c["code"], c["rule"], c["initiator"]): c["count"] for c in data["closes"]} == (
        EXPECTED["closes"]
    )
    assert data["gauges"][1] == {
        "name": "event_loop_lag",
        "value": 0.0,
        "limit": 0.25,
        "tripped": False,
        "sheds": 0,
        "shadow_sheds": 1,
        "open_sheds": 0,
    }
    assert data["durations"]["buckets"][-1] == "+Inf"
    assert data["durations"]["total"] == 9
    assert data["taken_at"] == snap.taken_at > 0


async def test_non_finite_gauge_reading_is_null_in_json() -> None:
    guard, lag = make_guard()
    lag.current = float("nan")
    data = guard.metrics.snapshot().as_dict()
    assert data["gauges"][1]["value"] is None
    json.dumps(data, allow_nan=False)


async def test_snapshot_from_another_thread_while_connections_run() -> None:
    guard, lag = make_guard()
    snaps: list[MetricsSnapshot] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            snaps.append(guard.metrics.snapshot())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        await run_mix(guard, lag)
    finally:
        stop.set()
        thread.join(5)
    assert snaps
    assert guard.metrics.snapshot().closes_by_code == EXPECTED["closes_by_code"]


# -- on_close hook ------------------------------------------------------------------


async def test_hook_sees_every_counted_close_and_shadow_breach() -> None:
    events: list[CloseEvent] = []
    guard, lag = make_guard(on_close=events.append)
    await run_mix(guard, lag)
    real = [e for e in events if not e.shadow]
    shadow = [e for e in events if e.shadow]
    assert sorted((e.code, e.rule, e.initiator) for e in real) == sorted(
        key for key, n in EXPECTED["closes"].items() for _ in range(n)
    )
    assert sorted((e.code, e.rule) for e in shadow) == [
        (1008, "content:no_links"),
        (1013, "overloaded"),
    ]
    too_big = next(e for e in real if e.code == 1009)
    assert too_big.reason == "message_too_big"
    assert too_big.client_ip == "127.0.0.1"
    assert len(too_big.connection_id) == 32
    assert 0.0 <= too_big.duration < 5.0
    shed = next(e for e in real if e.code == 1013)
    assert shed.reason.startswith("overloaded; retry-after=")
    assert shed.duration == 0.0  # never admitted
    with pytest.raises(FrozenInstanceError):
        too_big.code = 1000  # type: ignore[misc]


def _raise(event: CloseEvent) -> None:
    raise ValueError(f"hook failed on {event.code}")


async def test_raising_hook_does_not_break_a_connection(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(
        rules=[
            rules.MaxMessageSize(8),
            rules.Content(lambda m: "link" not in m, name="no_links", enforce=False),
        ],
        on_close=_raise,
    )
    app = WSGuardMiddleware(echo, guard=guard)

    ws = ScriptedWebSocket(app)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("link")  # shadow breach: the hook raises, the message still arrives
    await ws.expect("websocket.send", text="link")
    await ws.send_text("ok")
    await ws.expect("websocket.send", text="ok")
    await ws.send_text("far too long")  # guard close: the hook raises, the close still goes out
    await ws.expect("websocket.close", code=1009, reason="message_too_big")
    await ws.finished()

    ws = ScriptedWebSocket(app)  # client close: the hook raises, the app still ends cleanly
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.disconnect(1000)
    await ws.finished()

    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1009: 1, 1000: 1}
    assert snap.shadow_breaches_by_rule == {"content:no_links": 1}
    assert snap.active_connections == 0
    failures = [r for r in caplog.records if "on_close hook raised" in r.getMessage()]
    assert len(failures) == 3
    assert all(r.exc_info is not None and r.exc_info[0] is ValueError for r in failures)


async def test_raising_hook_on_rejected_handshake() -> None:
    guard, _ = make_guard(on_close=_raise)
    app = WSGuardMiddleware(chatty, guard=guard)
    open_ws = []
    for _ in range(2):
        ws = ScriptedWebSocket(app)
        await ws.connect()
        await ws.expect("websocket.accept")
        open_ws.append(ws)
    shed = ScriptedWebSocket(app)
    await shed.connect()
    await shed.expect("websocket.accept")
    await shed.expect("websocket.close", code=1013)
    await shed.finished()
    for ws in open_ws:
        await ws.disconnect(1000)
        await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.handshakes_rejected == 1
    assert snap.closes_by_code == {1013: 1, 1000: 2}


def test_hook_must_be_callable() -> None:
    from ws_guard import ConfigurationError

    with pytest.raises(ConfigurationError, match="on_close must be callable, not 42"):
        Guard(on_close=42)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_logs_carry_structured_fields(caplog: pytest.LogCaptureFixture, backend: str) -> None:
    caplog.set_level(logging.INFO, logger="ws_guard")
    guard = Guard(rules=[rules.MaxMessageSize(2)])

    async def main() -> None:
        ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
        await ws.connect()
        await ws.expect("websocket.accept")
        await ws.send_text("abc")
        await ws.expect("websocket.close", code=1009)
        await ws.finished()

    anyio.run(main, backend=backend)
    record = next(r for r in caplog.records if "closed connection" in r.getMessage())
    assert record.ws_code == 1009  # type: ignore[attr-defined]
    assert record.ws_rule == "message_too_big"  # type: ignore[attr-defined]
    assert record.ws_client == "127.0.0.1"  # type: ignore[attr-defined]
