"""Rate limits and connection caps on memory storage, in process, with an injected clock."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.helpers import eventually
from tests.support.rate_helpers import Clock, HeaderSubject, echoes, user
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard._core.storage import SharedStorage
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Receive, Scope, Send


async def opened(
    app: Any,
    *,
    ip: str = "10.0.0.1",
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, client=(ip, 40000), headers=headers)
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def closed_with(ws: ScriptedWebSocket, text: str, code: int, reason: str) -> None:
    await ws.send_text(text)
    await ws.expect("websocket.close", code=code, reason=reason)
    await ws.finished()


# -- per-connection MessageRate ----------------------------------------------------
async def test_n_plus_k_messages_echo_exactly_n_then_rate_limited() -> None:
    clock = Clock()
    guard = Guard(rules=[rules.MessageRate("5/second")], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    ws = await opened(app)
    for i in range(8):  # 5 + 3 sent without waiting: only 5 come back
        await ws.send_text(f"m{i}")
    for i in range(5):
        await ws.expect("websocket.send", text=f"m{i}")
    await ws.expect("websocket.close", code=1008, reason="rate_limited; retry-after=1")
    await ws.finished()
    assert ws.sent[-1]["type"] == "websocket.close"
    assert len([m for m in ws.sent if m["type"] == "websocket.send"]) == 5
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1008: 1}
    assert snap.closes_by_rule == {"rate_limited": 1}
    assert snap.active_connections == 0


async def test_window_edges_are_exact() -> None:
    """MessageRate's window: [t0, t0 + T) from the first message (limits/message_rate.py)."""
    clock = Clock(100.0)
    guard = Guard(rules=[rules.MessageRate("3/10 seconds")], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    before, at = await opened(app), await opened(app)  # two connections, two windows
    await echoes(before, 3, "a")  # each window opens at 100.0 with its first message
    await echoes(at, 3, "a")
    clock.now = 109.999  # one millisecond before the window ends: still full
    await closed_with(before, "late", 1008, "rate_limited; retry-after=1")
    clock.now = 110.0  # exactly T after the first message: the next window opens
    await echoes(at, 3, "b")
    clock.now = 119.5  # ...and it is full until 120.0
    await closed_with(at, "c", 1008, "rate_limited; retry-after=1")
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"rate_limited": 2}
    assert snap.active_connections == 0


async def test_retry_after_says_when_the_window_frees() -> None:
    clock = Clock(0.0)
    guard = Guard(rules=[rules.MessageRate("2/minute")], clock=clock)
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    await echoes(ws, 2)
    clock.now = 15.2
    await closed_with(ws, "x", 1008, "rate_limited; retry-after=45")


async def test_parse_many_applies_every_rate() -> None:
    clock = Clock(0.0)
    guard = Guard(rules=[rules.MessageRate("2/second; 3/minute")], clock=clock)
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    await echoes(ws, 2, "a")
    clock.now = 1.0  # a new second, the same minute
    await echoes(ws, 1, "b")
    clock.now = 1.5
    await closed_with(ws, "c", 1008, "rate_limited; retry-after=59")


async def test_shadow_mode_delivers_and_reports_once_per_window() -> None:
    clock = Clock(0.0)
    guard = Guard(rules=[rules.MessageRate("2/second", enforce=False)], clock=clock)
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    await echoes(ws, 5, "a")
    clock.now = 1.0
    await echoes(ws, 5, "b")
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"rate_limited": 2}
    assert snap.closes_by_code == {1000: 1}


async def test_rule_name_labels_the_close() -> None:
    guard = Guard(rules=[rules.MessageRate("1/minute", name="chat_rate")], clock=Clock())
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    await echoes(ws, 1)
    await closed_with(ws, "x", 1008, "rate_limited; retry-after=60")
    assert guard.metrics.snapshot().closes_by_rule == {"chat_rate": 1}


# -- shared keys on memory storage ---------------------------------------------------------
async def test_by_ip_is_shared_by_the_connections_of_one_address() -> None:
    clock = Clock(0.0)
    guard = Guard(rules=[rules.MessageRate("4/second", key=rules.by_ip)], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    a1 = await opened(app, ip="10.0.0.1")
    a2 = await opened(app, ip="10.0.0.1")
    b = await opened(app, ip="10.0.0.2")
    await echoes(a1, 2, "a1-")
    await echoes(a2, 2, "a2-")
    await echoes(b, 4, "b-")  # another address has its own quota
    await closed_with(a1, "over", 1008, "rate_limited; retry-after=1")
    clock.now = 1.0
    await echoes(a2, 4, "next-")
    for ws in (a2, b):
        await ws.disconnect()
        await ws.finished()


async def test_by_user_shares_across_connections_and_keeps_users_apart() -> None:
    clock = Clock(0.0)
    guard = Guard(
        rules=[HeaderSubject(), rules.MessageRate("3/minute", key=rules.by_user)], clock=clock
    )
    app = WSGuardMiddleware(echo, guard=guard)
    alice1 = await opened(app, headers=user("alice"))
    alice2 = await opened(app, ip="10.9.9.9", headers=user("alice"))
    bob = await opened(app, headers=user("bob"))
    await echoes(alice1, 2)
    await echoes(alice2, 1)
    await echoes(bob, 3)
    await closed_with(alice2, "x", 1008, "rate_limited; retry-after=60")
    anonymous = await opened(app)  # no subject: this limit does not apply
    await echoes(anonymous, 10)
    for ws in (alice1, bob, anonymous):
        await ws.disconnect()
        await ws.finished()


async def test_shared_state_is_dropped_after_its_window() -> None:
    clock = Clock(0.0)
    rule = rules.MessageRate("2/second", key=rules.by_ip)
    guard = Guard(rules=[rule], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    ws = await opened(app, ip="10.0.0.1")
    await echoes(ws, 2)
    states = rule._maps[0]
    assert len(states) == 1
    clock.now = 0.5
    assert states.sweep(clock.now) == 0
    clock.now = 1.0
    assert states.sweep(clock.now) == 1
    await echoes(ws, 2, "again")  # the connection looks its key up afresh
    await closed_with(ws, "x", 1008, "rate_limited; retry-after=1")


# -- ConnectRate -----------------------------------------------------------------------------
async def test_connect_rate_rejects_and_counts_rejected_attempts() -> None:
    clock = Clock(0.0)
    guard = Guard(rules=[rules.ConnectRate("3/minute")], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    for _ in range(3):
        ws = await opened(app)
        await ws.disconnect()
        await ws.finished()
    # Every attempt counts, refused ones too (a window's count stops at the
    # limit). In the second window (60-120 s) the first one's 3 attempts weigh
    # (120 - t) / 60: at 60 s fully; at 70 s 2.5, plus the one refused at 60 s.
    hammering = [(0.0, 60), (10.0, 50), (20.0, 40), (50.0, 10), (60.0, 20), (70.0, 30)]
    for t, hint in hammering:
        clock.now = t
        ws = ScriptedWebSocket(app, client=("10.0.0.1", 40000))
        await ws.connect()
        await ws.expect("websocket.accept")
        await ws.expect(
            "websocket.close", code=1008, reason=f"connect_rate_limited; retry-after={hint}"
        )
        await ws.finished()
    # A fixed window opened at 0 s would have let the client in at 60 s; hammering
    # every 10 s kept it out. Other addresses were never affected.
    other = await opened(app, ip="10.0.0.2")
    await other.disconnect()
    await other.finished()
    clock.now = 100.5  # just past the hint: 3 * 19.5/60 + 2 refused = 2.975 < 3
    ws = await opened(app)
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"connect_rate_limited": 6}
    assert snap.handshakes_rejected == 6


async def test_connect_rate_http_denial_is_429_with_retry_after() -> None:
    guard = Guard(rules=[rules.ConnectRate("1/minute")], clock=Clock(0.0), reject="http")
    app = WSGuardMiddleware(echo, guard=guard)
    ws = await opened(app)
    await ws.disconnect()
    await ws.finished()
    ws = ScriptedWebSocket(app, client=("10.0.0.1", 40000))
    await ws.connect()
    start = await ws.expect("websocket.http.response.start", status=429)
    assert (b"retry-after", b"60") in start["headers"]
    await ws.expect("websocket.http.response.body", body=b"connect_rate_limited; retry-after=60")


async def test_connect_rate_shadow_mode_admits() -> None:
    guard = Guard(rules=[rules.ConnectRate("1/minute", enforce=False)], clock=Clock(0.0))
    app = WSGuardMiddleware(echo, guard=guard)
    for _ in range(3):
        ws = await opened(app)
        await ws.disconnect()
        await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"connect_rate_limited": 2}
    assert snap.handshakes_admitted == 3


# -- MaxConnectionsPerKey ---------------------------------------------------------------------
async def crash_after_one(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    await receive()
    raise RuntimeError("app bug")


async def test_connection_cap_counts_and_releases_on_every_close_path() -> None:
    clock = Clock(0.0)
    cap = rules.MaxConnectionsPerKey(2, key=rules.by_ip)
    guard = Guard(rules=[cap, rules.MessageRate("1/minute")], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    a = await opened(app)
    b = await opened(app)
    assert cap.count("10.0.0.1") == 2
    third = ScriptedWebSocket(app, client=("10.0.0.1", 40000))
    await third.connect()
    await third.expect("websocket.accept")
    await third.expect("websocket.close", code=1008, reason="too_many_connections")
    await third.finished()
    assert cap.count("10.0.0.1") == 2
    other = await opened(app, ip="10.0.0.2")  # another key is not affected

    await a.disconnect()  # client close
    await a.finished()
    assert cap.count("10.0.0.1") == 1
    await echoes(b, 1)
    await closed_with(b, "too fast", 1008, "rate_limited; retry-after=60")  # guard close
    assert cap.count("10.0.0.1") == 0

    crashing = WSGuardMiddleware(crash_after_one, guard=guard)
    c = await opened(crashing)
    assert cap.count("10.0.0.1") == 1
    await c.send_text("boom")  # app crash
    await c.expect("websocket.close", code=1011, reason="internal_error")
    with pytest.raises(RuntimeError, match="app bug"):
        await c.finished()
    assert cap.count("10.0.0.1") == 0
    await other.disconnect()
    await other.finished()
    assert cap._counts == {}


async def test_connection_cap_by_user_and_shadow_mode() -> None:
    cap = rules.MaxConnectionsPerKey(1, key=rules.by_user, enforce=False)
    guard = Guard(rules=[HeaderSubject(), cap], clock=Clock(0.0))
    app = WSGuardMiddleware(echo, guard=guard)
    first = await opened(app, headers=user("alice"))
    second = await opened(app, headers=user("alice"))  # over the cap, admitted in shadow mode
    assert cap.count('[null,"alice"]') == 2  # by_user keys (iss, sub)
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"too_many_connections": 1}
    for ws in (first, second):
        await ws.disconnect()
        await ws.finished()
    assert cap.count('[null,"alice"]') == 0


# -- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: rules.MessageRate("lots"), "'lots'"),
        (lambda: rules.MessageRate(20), "20"),
        (lambda: rules.MessageRate("0/second"), "at least one"),
        (lambda: rules.MessageRate("1/second", key="ip"), "'ip'"),  # type: ignore[arg-type]
        (lambda: rules.MessageRate("1/second", lease=0), "lease"),
        (lambda: rules.ConnectRate("1/second", key=rules.by_user), "by_user"),
        (lambda: rules.MaxConnectionsPerKey(0), "0"),
        (lambda: rules.MaxConnectionsPerKey(2, heartbeat=-1), "-1"),
        (lambda: Guard(storage="memcached://localhost"), "memcached"),
        (lambda: Guard(storage="redis"), "'redis'"),
    ],
)
def test_misconfiguration_raises_with_the_value(build: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        # limits reads a zero multiple as one: the window would be silently 1 s or 1 minute
        ("1/0 seconds", "rate '1/0 seconds' has a window of zero length"),
        ("5 per 00 minute", "rate '5 per 00 minute' has a window of zero length"),
        ("10/second; 100/0 minutes", "rate '10/second; 100/0 minutes' has a window of zero"),
        # a Redis expiry this far out fails every call: on_storage_error="allow" lets all in
        ("1/99999999999999999999 years", "has a window of 3.1104e+27 s, longer than ten years"),
        ("5/11 years", "rate '5/11 years' has a window of 3.42144e+08 s, longer than ten years"),
        ("99999999999999999999/second", "'99999999999999999999/second' allows more than 2**53"),
    ],
)
@pytest.mark.parametrize(
    "make", [rules.MessageRate, rules.ConnectRate, rules.ByteRate], ids=lambda m: m.__name__
)
def test_a_rate_whose_window_or_limit_would_not_hold_is_refused(
    make: Any, rate: str, message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        make(rate)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("rate", "limit", "window"),
    [
        ("5/10 years", 5, 311_040_000.0),  # limits' year is 360 days; ten is the longest taken
        ("1/10 seconds", 1, 10.0),
        ("100/01 minute", 100, 60.0),
        ("3/2 days", 3, 172_800.0),
        ("9007199254740992/second", 2**53, 1.0),
    ],
)
def test_windows_and_limits_within_the_bounds_are_taken(
    rate: str, limit: int, window: float
) -> None:
    (parsed,) = rules.MessageRate(rate).rates
    assert (parsed.limit, parsed.window) == (limit, window)


@pytest.mark.parametrize(
    ("heartbeat", "message"),
    [
        (10_000, "10000 looks like milliseconds"),
        (10_000.0, "10000 looks like milliseconds"),
        (10**6, "1000000 is far too long"),
    ],
)
def test_cap_heartbeat_in_milliseconds_is_refused(heartbeat: float, message: str) -> None:
    # A dead process' slots live 3 heartbeats: 10000 would lock its clients out for 8 hours.
    with pytest.raises(ConfigurationError) as info:
        rules.MaxConnectionsPerKey(3, heartbeat=heartbeat)
    assert (
        str(info.value) == f"MaxConnectionsPerKey heartbeat is in seconds (at most 300); {message}"
    )
    assert rules.MaxConnectionsPerKey(3, heartbeat=300).slot_ttl == 900.0


def _no_args() -> str:
    return "everyone"


def _two_args(conn: Any, other: Any) -> str:
    return "x"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda k: rules.MessageRate("5/second", key=k), "MessageRate key must take one argument"),
        (lambda k: rules.ConnectRate("5/minute", key=k), "ConnectRate key must take one argument"),
        (
            lambda k: rules.MaxConnectionsPerKey(3, key=k),
            "MaxConnectionsPerKey key must take one argument",
        ),
    ],
    ids=["MessageRate", "ConnectRate", "MaxConnectionsPerKey"],
)
@pytest.mark.parametrize("key", [_no_args, _two_args, lambda: "x"], ids=["none", "two", "lambda"])
def test_key_that_cannot_take_the_connection_is_refused(make: Any, fragment: str, key: Any) -> None:
    # It would raise on every handshake or message instead of counting.
    with pytest.raises(ConfigurationError) as info:
        make(key)
    assert str(info.value) == f"{fragment}, the connection; {key!r} cannot"


@pytest.mark.parametrize(
    "make",
    [
        lambda: rules.ConnectRate("5/minute", key=rules.by_connection),
        lambda: rules.MaxConnectionsPerKey(3, key=rules.by_connection),
    ],
    ids=["ConnectRate", "MaxConnectionsPerKey"],
)
def test_per_connection_key_that_never_limits_is_refused(make: Any) -> None:
    # Every handshake has a new connection id: its count never passes 1.
    with pytest.raises(ConfigurationError) as info:
        make()
    assert "key=rules.by_connection gives every connection its own key, so it never limits" in str(
        info.value
    )


def test_key_callables_of_every_shape_are_accepted() -> None:
    class ByHeader:
        def __call__(self, conn: Any, *, default: str = "-") -> str:
            return default

    for key in (ByHeader(), lambda conn, extra=1: "x", lambda *args: "x", str):
        rules.MessageRate("5/second", key=key)
        rules.ConnectRate("5/minute", key=key)
    rules.MessageRate("5/second", key=rules.by_connection)  # its own window per connection


ROUND_TRIP = [
    "5/second",
    "5 per second",
    "100/minute",
    "3 per 2 minutes",
    "10/90 seconds",
    "4/hour",
    "1/day",
    "2/month",
    "7/year",
    "10/second; 100/minute",
    "10/second, 600/hour",
    ["20/second", "600 per minute"],
]


@pytest.mark.parametrize("rate", ROUND_TRIP, ids=[str(r) for r in ROUND_TRIP])
@pytest.mark.parametrize("rule", [rules.MessageRate, rules.ConnectRate])
def test_the_rate_a_repr_shows_is_accepted_back(rule: Any, rate: Any) -> None:
    # repr once showed '5/1s', which the constructor refused.
    first = rule(rate)
    shown = re.fullmatch(rf"{rule.__name__}\('([^']+)', key=.*\)", repr(first))
    assert shown is not None, repr(first)
    again = rule(shown.group(1))
    assert again.rates == first.rates
    assert repr(again) == repr(first)
    assert again.id == first.id  # storage key names do not change with the repr


@pytest.mark.parametrize(
    ("rate", "shown", "rule_id"),
    [
        ("5/second", "5/second", "by_ip:5/1s"),
        ("3 per 2 minutes", "3/2 minutes", "by_ip:3/120s"),
        ("10/second; 100/minute", "10/second; 100/minute", "by_ip:10/1s,100/60s"),
        ("2/month", "2/30 days", "by_ip:2/2.592e+06s"),
    ],
)
def test_rate_repr_and_storage_id(rate: str, shown: str, rule_id: str) -> None:
    rule = rules.ConnectRate(rate)
    assert repr(rule) == f"ConnectRate({shown!r}, key=by_ip, enforce=True, name=None)"
    assert rule.id == rule_id


def test_by_user_needs_a_subject_rule() -> None:
    with pytest.raises(ConfigurationError, match="by_user"):
        Guard(rules=[rules.MessageRate("1/second", key=rules.by_user)])
    with pytest.raises(ConfigurationError, match="by_user"):
        Guard(rules=[rules.MaxConnectionsPerKey(1, key=rules.by_user)])
    Guard(rules=[HeaderSubject(), rules.MessageRate("1/second", key=rules.by_user)])


def test_a_rule_belongs_to_one_guard() -> None:
    rate = rules.MessageRate("1/second")
    Guard(rules=[rate])
    with pytest.raises(ConfigurationError, match="another Guard"):
        Guard(rules=[rate])


def test_limits_items_and_lists_are_accepted() -> None:
    from limits import parse

    rule = rules.MessageRate([parse("1/second"), "10/minute; 100/hour"])
    assert [(r.limit, r.window) for r in rule.rates] == [(1, 1.0), (10, 60.0), (100, 3600.0)]


async def test_by_user_keys_on_the_jwt_subject() -> None:
    import jwt

    secret = "rate-limit-test-secret-0123456789abcdef"

    def token(subject: str) -> bytes:
        claims = {"sub": subject, "exp": int(time.time()) + 600}
        return b"token=" + jwt.encode(claims, secret, algorithm="HS256").encode()

    guard = Guard(
        rules=[
            rules.MessageRate("2/minute", key=rules.by_user),
            rules.MaxConnectionsPerKey(1, key=rules.by_user),
            rules.JWTAuth(secret, algorithms=["HS256"], token=rules.from_query("token")),
        ]
    )
    app = WSGuardMiddleware(echo, guard=guard)
    alice = ScriptedWebSocket(app, query_string=token("alice"))
    await alice.connect()
    await alice.expect("websocket.accept")
    again = ScriptedWebSocket(app, query_string=token("alice"))
    await again.connect()
    await again.expect("websocket.accept")
    await again.expect("websocket.close", code=1008, reason="too_many_connections")
    bob = ScriptedWebSocket(app, query_string=token("bob"))
    await bob.connect()
    await bob.expect("websocket.accept")
    await echoes(alice, 2)
    await echoes(bob, 2)
    await closed_with(alice, "third", 1008, "rate_limited; retry-after=60")
    await bob.disconnect()
    await bob.finished()
    await again.finished()


async def test_one_maintenance_task_runs_every_job_until_removed() -> None:
    storage = SharedStorage("memory://")
    await storage.open()
    runs = {"fast": 0, "slow": 0}

    def job(name: str) -> Any:
        async def run() -> None:
            runs[name] += 1

        return run

    fast = storage.add_job(0.02, job("fast"))
    storage.add_job(60.0, job("slow"))
    task = storage._task
    await eventually(lambda: runs["fast"] >= 3, what="three runs of the fast job")
    assert runs["slow"] == 0
    assert storage._task is task  # both jobs share one task
    storage.remove_job(fast)
    seen = runs["fast"]
    # A probe on the same interval: by its third run, the removed job would have run again.
    storage.add_job(0.02, job("probe"))
    runs["probe"] = 0
    await eventually(lambda: runs["probe"] >= 3, what="three runs of the probe job")
    assert runs["fast"] <= seen + 1  # at most a run already under way
    await storage.close()
    assert task is not None
    assert task.cancelled()
    assert not storage.is_open


@pytest.mark.parametrize(
    "make",
    [
        lambda name=None: rules.MessageRate("5/second", key=rules.by_ip, name=name),
        lambda name=None: rules.ConnectRate("5/minute", name=name),
        lambda name=None: rules.MaxConnectionsPerKey(3, name=name),
    ],
    ids=["MessageRate", "ConnectRate", "MaxConnectionsPerKey"],
)
def test_two_rules_with_one_storage_id_are_refused(make: Any) -> None:
    # With Redis both would count in the same keys: every event twice.
    first, second = make(), make()
    with pytest.raises(ConfigurationError) as info:
        Guard(rules=[first, second])
    assert str(info.value) == (
        f"{second!r} and {first!r} share the storage id {first.id!r}, so with Redis "
        "they would count in the same keys; give one a distinct name="
    )
    Guard(rules=[make("a"), make("b")])


def test_per_connection_rates_share_no_storage_and_may_repeat() -> None:
    guard = Guard(rules=[rules.MessageRate("5/second"), rules.MessageRate("5/second")])
    assert [r.id for r in guard.rules] == ["by_connection:5/1s"] * 2
