"""``ByteRate`` on memory storage, in process, with an injected clock: exact to the byte."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.jwt_keys import SECRET, mint
from tests.support.rate_helpers import Clock, HeaderSubject, user
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.rules.limits.byte_windows import CostWindow, payload_bytes
from ws_guard.testing import ScriptedWebSocket


async def opened(
    app: Any, *, ip: str = "10.0.0.1", headers: Iterable[tuple[bytes, bytes]] = ()
) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, client=(ip, 40000), headers=headers)
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


def guarded(*rule_list: rules.Rule, clock: Clock) -> tuple[Any, Guard]:
    guard = Guard(rules=list(rule_list), clock=clock)
    return WSGuardMiddleware(echo, guard=guard), guard


async def echoed(ws: ScriptedWebSocket, *texts: str) -> None:
    for text in texts:
        await ws.send_text(text)
        await ws.expect("websocket.send", text=text)


async def closed_with(ws: ScriptedWebSocket, text: str, code: int, reason: str) -> None:
    await ws.send_text(text)
    await ws.expect("websocket.close", code=code, reason=reason)
    await ws.finished()


# -- the size of a message -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("message", "size"),
    [
        ({"type": "websocket.receive", "text": "hello"}, 5),
        ({"type": "websocket.receive", "text": ""}, 0),
        ({"type": "websocket.receive", "text": "é"}, 2),
        ({"type": "websocket.receive", "text": "€"}, 3),
        ({"type": "websocket.receive", "text": "a😀"}, 5),
        ({"type": "websocket.receive", "text": "\ud800"}, 3),  # a lone surrogate: no raise
        ({"type": "websocket.receive", "bytes": b"\x00\xff\x10"}, 3),
        ({"type": "websocket.receive", "bytes": b""}, 0),
        ({"type": "websocket.receive"}, 0),
    ],
)
def test_payload_bytes_counts_text_in_utf8_and_binary_as_is(
    message: dict[str, Any], size: int
) -> None:
    assert payload_bytes(message) == size


def test_a_cost_window_admits_exactly_its_limit_and_counts_no_refusal() -> None:
    window = CostWindow(10, 1.0)
    assert window.take(5.0, 9) is None
    assert window.take(5.1, 2) == pytest.approx(0.9)  # 11 > 10: refused, not counted
    assert window.count == 9
    assert window.take(5.2, 1) is None  # exactly 10
    assert window.take(5.3, 1) == pytest.approx(0.7)
    assert window.take(5.3, 0) is None  # an empty message always fits
    assert window.take(6.0, 10) is None  # a new window opens at its first message
    assert window.end == 7.0


# -- per connection: the boundary ----------------------------------------------------------
@pytest.mark.parametrize("rule_key", [rules.by_connection, rules.by_ip])
@pytest.mark.parametrize("first", [9, 10])
async def test_limit_minus_one_and_limit_pass_limit_plus_one_closes(
    rule_key: Any, first: int
) -> None:
    clock = Clock(0.0)
    app, guard = guarded(rules.ByteRate("10/second", key=rule_key), clock=clock)
    ws = await opened(app)
    await echoed(ws, "a" * first)
    if first == 9:
        await echoed(ws, "b")  # 10 bytes: exactly the limit
    clock.now = 0.25
    await closed_with(ws, "c", 1008, "rate_limited; retry-after=1")  # 11 bytes
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"rate_limited": 1}
    assert snap.closes_by_code == {1008: 1}


async def test_the_next_window_admits_the_limit_again() -> None:
    clock = Clock(100.0)
    app, _ = guarded(rules.ByteRate("6/10 seconds"), clock=clock)
    ws = await opened(app)
    await echoed(ws, "abcdef")
    clock.now = 110.0  # exactly T after the first message: a new window
    await echoed(ws, "ghi", "jkl")
    clock.now = 115.2
    await closed_with(ws, "m", 1008, "rate_limited; retry-after=5")


async def test_multibyte_text_counts_its_utf8_bytes() -> None:
    clock = Clock(0.0)
    app, _ = guarded(rules.ByteRate("12/minute"), clock=clock)
    ws = await opened(app)
    await echoed(ws, "éé", "€", "😀")  # 4 + 3 + 4 = 11 bytes in 4 characters
    await echoed(ws, "")  # nothing: empty messages pass even at the limit
    await closed_with(ws, "é", 1008, "rate_limited; retry-after=60")  # 13 bytes, 5 characters


async def test_binary_counts_its_bytes() -> None:
    clock = Clock(0.0)
    app, _ = guarded(rules.ByteRate("8/second"), clock=clock)
    ws = await opened(app)
    await ws.send_bytes(b"\x00" * 5)
    await ws.expect("websocket.send", bytes=b"\x00" * 5)
    await ws.send_bytes(b"\xff" * 3)
    await ws.expect("websocket.send", bytes=b"\xff" * 3)
    await ws.send_bytes(b"!")
    await ws.expect("websocket.close", code=1008, reason="rate_limited; retry-after=1")
    await ws.finished()


async def test_several_rates_all_apply_and_the_close_names_the_longest_wait() -> None:
    clock = Clock(0.0)
    app, _ = guarded(rules.ByteRate("10/second; 15/minute"), clock=clock)
    ws = await opened(app)
    await echoed(ws, "a" * 10)
    clock.now = 0.5
    await ws.send_text("b")  # the second is full
    await ws.expect("websocket.close", code=1008, reason="rate_limited; retry-after=1")
    await ws.finished()
    clock.now = 2.0
    ws = await opened(app)
    await echoed(ws, "a" * 10)
    clock.now = 3.0  # a new second, the same minute: 5 bytes left of 15
    await echoed(ws, "b" * 5)
    clock.now = 3.5
    await closed_with(ws, "c", 1008, "rate_limited; retry-after=59")


# -- one message over the whole limit --------------------------------------------------------
@pytest.mark.parametrize("rate", ["10/second", "100/second; 10/minute"])
@pytest.mark.parametrize("rule_key", [rules.by_connection, rules.by_ip])
async def test_a_message_larger_than_the_limit_closes_1009_at_once(
    rate: str, rule_key: Any
) -> None:
    clock = Clock(0.0)
    app, guard = guarded(rules.ByteRate(rate, key=rule_key), clock=clock)
    ws = await opened(app)
    await closed_with(ws, "x" * 11, 1009, "message_too_big")  # a fresh window: no wait helps
    assert guard.metrics.snapshot().closes_by_rule == {"message_too_big": 1}
    ws = await opened(app)  # it counted nothing: the same key still has all 10 bytes
    await echoed(ws, "y" * 10)


async def test_a_guard_whose_size_limit_is_above_the_byte_rate_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"up to 1025 bytes.*at most 1024"):
        Guard(rules=[rules.MaxMessageSize(1025), rules.ByteRate("1024/second; 4096/minute")])
    with pytest.raises(ConfigurationError, match="up to 2000 bytes"):
        Guard(rules=[rules.ByteRate("1000/second"), rules.MaxMessageSize(2000, enforce=False)])
    Guard(rules=[rules.MaxMessageSize(1024), rules.ByteRate("1024/second")])  # equal is fine


# -- configuration ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": "lots"}, "'lots' is not in limits syntax"),
        ({"limit": "0/second"}, "must allow at least one event"),
        ({"limit": 1024}, "not 1024"),
        ({"limit": "10/second", "lease": 0}, "ByteRate lease must be a positive integer, not 0"),
        ({"limit": "10/second", "key": "ip"}, "not 'ip'"),
        ({"limit": "10/second", "warn_at": 0}, "between 0 and 1, such as 0.8, not 0"),
        ({"limit": "10/second", "warn_at": 1}, "not 1"),
        ({"limit": "10/second", "warn_at": 80}, "not 80"),
        ({"limit": "10/second", "warn_at": True}, "not True"),
        ({"limit": "10/second", "warn_at": "0.8"}, "not '0.8'"),
        ({"limit": "10/second", "warn_at": float("nan")}, "not nan"),
    ],
)
def test_misconfiguration_names_the_bad_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        rules.ByteRate(**kwargs)


@pytest.mark.parametrize("warn_at", [0, 1.0, -0.5, "half"])
def test_message_rate_refuses_a_bad_warn_at(warn_at: object) -> None:
    with pytest.raises(ConfigurationError, match=f"MessageRate warn_at .* not {warn_at!r}"):
        rules.MessageRate("10/second", warn_at=warn_at)  # type: ignore[arg-type]


def test_repr_shows_the_limit_as_the_constructor_takes_it() -> None:
    rule = rules.ByteRate("1048576/minute; 2048/second", key=rules.by_ip, name="upload")
    assert repr(rule) == (
        "ByteRate('1048576/minute; 2048/second', key=by_ip, enforce=True, name='upload')"
    )


# -- shadow mode and labels ------------------------------------------------------------------
async def test_shadow_mode_delivers_everything_and_reports_once_per_window() -> None:
    clock = Clock(0.0)
    app, guard = guarded(rules.ByteRate("4/second", enforce=False, warn_at=0.5), clock=clock)
    ws = await opened(app)
    await echoed(ws, "abcd", "e", "f")  # two breaches in one window: one report
    clock.now = 1.0
    await echoed(ws, "abcd", "ef")  # and no warning: shadow mode sends nothing of its own
    await echoed(ws, "x" * 5)  # larger than the limit: reported, delivered
    await ws.disconnect()
    await ws.finished()
    assert [m["text"] for m in ws.sent if m["type"] == "websocket.send"] == [
        "abcd",
        "e",
        "f",
        "abcd",
        "ef",
        "xxxxx",
    ]
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"rate_limited": 2, "message_too_big": 1}
    assert snap.closes_by_code == {1000: 1}


async def test_the_rule_name_labels_the_close() -> None:
    app, guard = guarded(rules.ByteRate("3/minute", name="uploads"), clock=Clock())
    ws = await opened(app)
    await echoed(ws, "abc")
    await closed_with(ws, "d", 1008, "rate_limited; retry-after=60")
    assert guard.metrics.snapshot().closes_by_rule == {"uploads": 1}


# -- shared keys in memory -------------------------------------------------------------------
async def test_by_user_shares_the_bytes_across_connections_and_keeps_users_apart() -> None:
    clock = Clock(0.0)
    app, _ = guarded(HeaderSubject(), rules.ByteRate("10/minute", key=rules.by_user), clock=clock)
    alice1 = await opened(app, headers=user("alice"))
    alice2 = await opened(app, ip="10.9.9.9", headers=user("alice"))
    bob = await opened(app, headers=user("bob"))
    await echoed(alice1, "a" * 6)
    await echoed(alice2, "b" * 4)  # alice: exactly 10
    await echoed(bob, "c" * 10)  # bob has his own 10
    await closed_with(alice1, "d", 1008, "rate_limited; retry-after=60")
    anonymous = await opened(app)  # no subject: this limit does not apply
    await echoed(anonymous, "e" * 10, "f" * 10)
    for ws in (alice2, bob, anonymous):
        await ws.disconnect()
        await ws.finished()


# -- warnings --------------------------------------------------------------------------------
def warning(rule: str, retry_after: int) -> str:
    return json.dumps({"type": "rate.warning", "rule": rule, "retry_after": retry_after})


async def echoed_with_warning(ws: ScriptedWebSocket, text: str, notice: str) -> None:
    """*text* is echoed and *notice* sent, in either order (the notice goes out on its own)."""
    await ws.send_text(text)
    got = [(await ws.expect("websocket.send"))["text"] for _ in range(2)]
    assert sorted(got) == sorted([text, notice])


async def test_byte_rate_warns_once_per_window_then_closes() -> None:
    clock = Clock(0.0)
    app, _ = guarded(rules.ByteRate("10/10 seconds", warn_at=0.5), clock=clock)
    ws = await opened(app)
    await echoed(ws, "abcd")  # 4 of 10: below 5
    clock.now = 2.5
    await echoed_with_warning(ws, "e", warning("rate_limited", 8))  # 5: the threshold, 7.5 s left
    await echoed(ws, "fgh", "ij")  # 10: the limit, no second warning in this window
    clock.now = 10.0  # a new window
    await echoed(ws, "abcd")
    clock.now = 10.1
    await echoed_with_warning(ws, "efghij", warning("rate_limited", 10))
    await closed_with(ws, "k", 1008, "rate_limited; retry-after=10")
    sent = [m.get("text") for m in ws.sent if m["type"] == "websocket.send"]
    assert sent.count(warning("rate_limited", 8)) == 1


async def test_a_warning_names_the_rule_and_the_longest_wait_of_the_windows_reaching_it() -> None:
    clock = Clock(0.0)
    rule = rules.ByteRate("10/second; 20/minute", key=rules.by_ip, warn_at=0.8, name="uploads")
    app, _ = guarded(rule, clock=clock)
    ws = await opened(app)
    await echoed(ws, "a" * 7)
    await echoed_with_warning(ws, "b", warning("uploads", 1))  # 8 of 10; the minute 8 of 20
    clock.now = 1.0
    await echoed(ws, "c" * 7)  # the second: 7 of 10; the minute: 15 of 20
    await echoed_with_warning(ws, "d", warning("uploads", 59))  # both reach theirs: 59 s
    await ws.disconnect()
    await ws.finished()


async def test_message_rate_warns_once_per_window_and_its_fast_path_is_left_alone() -> None:
    clock = Clock(0.0)
    rule = rules.MessageRate("4/10 seconds", warn_at=0.75)
    assert rule.fast_check() is None  # a warning rule is checked on its own
    assert rules.MessageRate("4/10 seconds").fast_check() is not None
    app, _ = guarded(rule, clock=clock)
    ws = await opened(app)
    await echoed(ws, "m0", "m1")
    clock.now = 4.2
    await echoed_with_warning(ws, "m2", warning("rate_limited", 6))  # 3 of 4, 5.8 s left
    await echoed(ws, "m3")
    clock.now = 10.0
    await echoed(ws, "n0", "n1")
    await echoed_with_warning(ws, "n2", warning("rate_limited", 10))
    await echoed(ws, "n3")
    await closed_with(ws, "n4", 1008, "rate_limited; retry-after=10")


async def test_message_rate_warns_on_a_shared_key() -> None:
    clock = Clock(0.0)
    rule = rules.MessageRate("2/minute", key=rules.by_ip, warn_at=0.5, name="chat")
    app, guard = guarded(rule, clock=clock)
    one = await opened(app)
    two = await opened(app)
    await echoed_with_warning(one, "a", warning("chat", 60))  # 1 of 2: the key's threshold
    clock.now = 30.0
    await echoed_with_warning(two, "b", warning("chat", 30))  # its own first warning
    await closed_with(one, "c", 1008, "rate_limited; retry-after=30")
    assert guard.metrics.snapshot().closes_by_rule == {"chat": 1}
    await two.disconnect()
    await two.finished()


async def test_message_rate_in_shadow_mode_sends_no_warning() -> None:
    clock = Clock(0.0)
    app, guard = guarded(rules.MessageRate("2/second", warn_at=0.5, enforce=False), clock=clock)
    ws = await opened(app)
    await echoed(ws, "a", "b", "c")
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"rate_limited": 1}


# -- in-band token refreshes -----------------------------------------------------------------
async def test_a_refresh_counts_its_bytes_before_its_signature_is_checked() -> None:
    auth = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_header())
    decodes: list[str] = []
    decode = auth.decode

    def counted(token: str, key: Any) -> Any:
        decodes.append(token)
        return decode(token, key)

    auth.decode = counted  # type: ignore[method-assign]
    first, second = (refresh_message(mint(exp_in=600 + i)) for i in (100, 200))
    limit = len(first.encode()) + len(second.encode()) - 1  # the second does not fit
    clock = Clock(0.0)
    app, guard = guarded(auth, rules.ByteRate(f"{limit}/minute"), clock=clock)
    ws = ScriptedWebSocket(app, headers=[(b"authorization", f"Bearer {mint(exp_in=600)}".encode())])
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(first)  # consumed by JWTAuth, counted here
    await ws.send_text(second)
    await ws.expect("websocket.close", code=1008, reason="rate_limited; retry-after=60")
    await ws.finished()
    assert len(decodes) == 2  # the handshake's token and the first refresh: not the second
    assert guard.metrics.snapshot().closes_by_rule == {"rate_limited": 1}


def refresh_message(token: str) -> str:
    return json.dumps({"type": "auth.refresh", "token": token})
