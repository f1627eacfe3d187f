"""Per-kind rates: ``MessageRate(match=..., name=...)``, in process, with an injected clock."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import Clock, HeaderSubject, user
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard._core.plan import plan_checks
from ws_guard.codes import MAX_REASON_BYTES
from ws_guard.rules.kinds import LastParse
from ws_guard.testing import ScriptedWebSocket


def chat(text: str = "hi") -> str:
    return json.dumps({"type": "chat", "text": text})


def typing() -> str:
    return json.dumps({"type": "typing"})


def kinds_guard(clock: Clock, *extra: rules.Rule, **chat_options: Any) -> Guard:
    return Guard(
        rules=[
            *extra,
            rules.MessageRate("3/second", match=rules.json_type("typing"), name="typing"),
            rules.MessageRate(
                "2/second", match=rules.json_type("chat"), name="chat", **chat_options
            ),
        ],
        clock=clock,
    )


async def opened(app: Any) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, client=("10.0.0.1", 40000))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def echoed(ws: ScriptedWebSocket, *texts: str) -> None:
    for text in texts:
        await ws.send_text(text)
        await ws.expect("websocket.send", text=text)


async def test_two_kinds_count_independently_and_other_messages_pass_uncounted() -> None:
    clock = Clock(0.0)
    guard = kinds_guard(clock)
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    await echoed(ws, chat("a"), typing(), chat("b"), typing(), typing())  # 2 chat, 3 typing
    await echoed(ws, *["plain text"] * 20, *[json.dumps({"type": "join"})] * 20)
    await echoed(ws, b'{"type": "other"}'.decode())  # neither kind
    clock.now = 0.25
    await ws.send_text(chat("c"))  # the third chat in the second: chat's own limit
    await ws.expect("websocket.close", code=1008, reason="rate_limited:chat; retry-after=1")
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"chat": 1}
    assert snap.closes_by_code == {1008: 1}


async def test_the_other_kind_closes_with_its_own_name_and_hint() -> None:
    clock = Clock(0.0)
    guard = Guard(
        rules=[
            rules.MessageRate("3/minute", match=rules.json_type("typing"), name="typing"),
            rules.MessageRate("2/second", match=rules.json_type("chat"), name="chat"),
        ],
        clock=clock,
    )
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    await echoed(ws, typing(), chat(), typing(), chat(), typing())
    clock.now = 15.2
    await echoed(ws, chat(), chat())  # a new second: chat's window opened again
    await ws.send_text(typing())
    await ws.expect("websocket.close", code=1008, reason="rate_limited:typing; retry-after=45")
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"typing": 1}


async def test_a_per_kind_rate_and_a_plain_rate_count_side_by_side() -> None:
    clock = Clock(0.0)
    guard = Guard(
        rules=[
            rules.MessageRate("4/second"),
            rules.MessageRate("1/second", match=rules.json_type("chat"), name="chat"),
        ],
        clock=clock,
    )
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    await echoed(ws, chat(), "x", "y", "z")  # the plain rate counts the chat too: 4 of 4
    await ws.send_text("w")
    await ws.expect("websocket.close", code=1008, reason="rate_limited; retry-after=1")
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"rate_limited": 1}


async def test_binary_json_and_escaped_values_count_too() -> None:
    """A client cannot dodge a kind by spelling the value with escapes or in a binary frame."""
    clock = Clock(0.0)
    guard = Guard(
        rules=[rules.MessageRate("2/second", match=rules.json_type("chat"), name="chat")],
        clock=clock,
    )
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    await ws.send_bytes(b'{"type": "chat"}')
    await ws.expect("websocket.send", bytes=b'{"type": "chat"}')
    await echoed(ws, '{"type": "\\u0063hat"}')
    await ws.send_text('{"type":"ch\\u0061t","x":1}')
    await ws.expect("websocket.close", code=1008, reason="rate_limited:chat; retry-after=1")
    await ws.finished()


#: Every encoding ``json.loads(bytes)`` reads (json.detect_encoding): an app that
#: parses binary frames with it sees a kind in each.
JSON_LOADS_ENCODINGS = [
    "utf-8",
    "utf-8-sig",
    "utf-16",
    "utf-16-le",
    "utf-16-be",
    "utf-32",
    "utf-32-le",
    "utf-32-be",
]


@pytest.mark.parametrize("encoding", JSON_LOADS_ENCODINGS)
def test_json_type_reads_binary_frames_as_json_loads_does(encoding: str) -> None:
    kind = rules.json_type("chat")
    for text, expected in [
        ('{"type": "chat"}', True),
        ('{"type": "\\u0063hat", "n": "\u00e9"}', True),  # escaped, and not ASCII
        (' {"type": "chat"}', True),  # leading white space
        ('{"type": "typing"}', False),
        ('["chat"]', False),
    ]:
        payload = text.encode(encoding)
        assert json.loads(payload) is not None  # what the app would read
        assert kind({"type": "websocket.receive", "bytes": payload}) is expected, (text, payload)


async def test_a_kind_in_utf_16_counts_against_the_same_window() -> None:
    """A client cannot dodge a kind by sending its JSON in another encoding json.loads reads."""
    guard = Guard(
        rules=[rules.MessageRate("2/second", match=rules.json_type("chat"), name="chat")],
        clock=Clock(0.0),
    )
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    for encoding in ("utf-16", "utf-8-sig"):
        payload = '{"type": "chat"}'.encode(encoding)
        await ws.send_bytes(payload)
        await ws.expect("websocket.send", bytes=payload)
    await ws.send_bytes('{"type": "chat"}'.encode("utf-32-be"))
    await ws.expect("websocket.close", code=1008, reason="rate_limited:chat; retry-after=1")
    await ws.finished()


#: JSON that ws_guard's own reading refuses but json.loads, what the app parses
#: with, reads: each is a chat to the app, so each counts.
READ_BY_JSON_LOADS = {
    "nan": '{"type": "chat", "x": NaN}',
    "infinity": '{"type": "chat", "x": [Infinity, -Infinity]}',
    "65-levels": '{"type": "chat", "x": ' + "[" * 65 + "]" * 65 + "}",
    "500-levels": '{"type": "chat", "x": ' + "[" * 500 + "]" * 500 + "}",
    "escaped-and-nan": '{"type": "\\u0063hat", "x": NaN}',
}


@pytest.mark.parametrize("name", sorted(READ_BY_JSON_LOADS))
def test_json_type_counts_what_json_loads_reads_as_the_kind(name: str) -> None:
    text = READ_BY_JSON_LOADS[name]
    assert json.loads(text)["type"] == "chat"  # what the app sees
    kind = rules.json_type("chat")
    assert kind({"type": "websocket.receive", "text": text}) is True
    assert kind({"type": "websocket.receive", "bytes": text.encode()}) is True
    assert kind({"type": "websocket.receive", "bytes": text.encode("utf-16")}) is True
    assert rules.json_type("typing")({"type": "websocket.receive", "text": text}) is False


def test_json_type_does_not_count_what_json_loads_cannot_read_either() -> None:
    kind = rules.json_type("chat")
    for text in [
        '{"type": "chat", "x": ' + "1" * 5000 + "}",  # past the int digit limit
        '{"type": "chat", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",  # out of stack
        '{"type": "chat", "x": ' + "[" * 100 + "}",  # unbalanced
    ]:
        with pytest.raises((ValueError, RecursionError)):
            json.loads(text)
        assert kind({"type": "websocket.receive", "text": text}) is False


async def test_a_chat_with_nan_counts_against_the_chat_window() -> None:
    guard = Guard(
        rules=[rules.MessageRate("2/second", match=rules.json_type("chat"), name="chat")],
        clock=Clock(0.0),
    )
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    nan_chat = '{"type": "chat", "x": NaN}'
    await echoed(ws, nan_chat, nan_chat)
    await ws.send_text(nan_chat)
    await ws.expect("websocket.close", code=1008, reason="rate_limited:chat; retry-after=1")
    await ws.finished()


def test_json_type_never_raises_on_bytes_that_look_like_another_encoding() -> None:
    kind = rules.json_type("chat")
    for payload in [b"\xff\xfe\x00", b"\x00\x00", b"\xef\xbb\xbf\xff", b"\xe9", b"\x00" * 9, b""]:
        assert kind({"type": "websocket.receive", "bytes": payload}) is False, payload


async def test_json_type_never_raises_and_matches_only_objects_with_the_value() -> None:
    kind = rules.json_type("chat")
    assert kind({"type": "websocket.receive", "text": '{"type": "chat"}'}) is True
    assert kind({"type": "websocket.receive", "text": '{"kind": "chat"}'}) is False
    assert kind({"type": "websocket.receive", "text": '["chat"]'}) is False
    assert kind({"type": "websocket.receive", "text": '"chat"'}) is False
    assert kind({"type": "websocket.receive", "text": '{"type": "chat"'}) is False
    assert kind({"type": "websocket.receive", "text": "[" * 5000 + '"chat"'}) is False
    assert kind({"type": "websocket.receive", "bytes": b'\xff"chat"'}) is False
    assert kind({"type": "websocket.receive"}) is False
    assert kind({"type": "websocket.receive", "text": '{"type": "chatter"}'}) is False
    other = rules.json_type("chat", field="op")
    assert other({"type": "websocket.receive", "text": '{"op": "chat", "type": "x"}'}) is True
    assert repr(other) == "json_type('chat', field='op')"


def test_a_payload_is_parsed_once_for_all_json_kinds_of_a_connection() -> None:
    parses: list[object] = []

    class Counting(LastParse):
        def __call__(self, payload: object) -> Any:
            if payload is not self.payload:
                parses.append(payload)
            return super().__call__(payload)

    parse = Counting()
    message = {"type": "websocket.receive", "text": '{"type": "chat", "note": "typing"}'}
    kinds = [rules.json_type(v) for v in ("typing", "chat", "join")]
    assert [kind.matches(message, parse) for kind in kinds] == [False, True, False]
    assert parses == [message["text"]]  # "join" is not in the text: not parsed at all
    plain = {"type": "websocket.receive", "text": "no json here"}
    assert [kind.matches(plain, parse) for kind in kinds] == [False, False, False]
    assert len(parses) == 1


async def test_a_raising_predicate_closes_1011_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    def broken(message: Any) -> bool:
        raise KeyError("boom")

    guard = Guard(rules=[rules.MessageRate("5/second", match=broken, name="kind")], clock=Clock())
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        await ws.send_text("x")
        await ws.expect("websocket.close", code=1011, reason="internal_error")
        await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"kind": 1}
    assert any("match raised" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_shadow_mode_counts_a_kind_once_per_window_and_keeps_the_connection() -> None:
    clock = Clock(0.0)
    guard = kinds_guard(clock, enforce=False)
    ws = await opened(WSGuardMiddleware(echo, guard=guard))
    await echoed(ws, *[chat()] * 5, *[typing()] * 3)
    clock.now = 1.0
    await echoed(ws, *[chat()] * 3)
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"chat": 2}
    assert snap.closes_by_code == {1000: 1}


def test_a_matched_rate_checks_itself_and_the_plain_rate_stays_fused() -> None:
    plain = rules.MessageRate("5/second")
    kind = rules.MessageRate("5/second", match=rules.json_type("chat"), name="chat")
    assert kind.fast_check() is None
    size = rules.MaxMessageSize(100)
    plan = plan_checks([size, plain, kind])
    assert plan[-1] is kind
    assert type(plan[0]).__name__ == "FusedRun"


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"match": rules.json_type("chat")}, "None"),
        ({"match": rules.json_type("chat"), "name": ""}, "''"),
        ({"match": rules.json_type("chat"), "name": "has space"}, "'has space'"),
        ({"match": rules.json_type("chat"), "name": "x" * 65}, "'" + "x" * 65 + "'"),
        ({"match": rules.json_type("chat"), "name": "café"}, "'café'"),
        ({"match": rules.json_type("chat"), "name": "chat\n"}, "'chat\\n'"),
        ({"match": "chat", "name": "chat"}, "'chat'"),
    ],
)
def test_misconfigured_kinds_are_refused_with_the_bad_value(
    options: dict[str, Any], bad: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.MessageRate("5/second", **options)
    assert bad in str(info.value)


def test_a_content_name_with_a_trailing_newline_is_refused_too() -> None:
    with pytest.raises(ConfigurationError, match="'x\\\\n'"):
        rules.Content(lambda payload: True, name="x\n")


@pytest.mark.parametrize(("value", "field"), [(1, "type"), ("chat", None), (None, "type")])
def test_json_type_refuses_what_is_not_a_string(value: Any, field: Any) -> None:
    with pytest.raises(ConfigurationError, match="must be strings"):
        rules.json_type(value, field=field)


def test_the_longest_reason_fits_a_close_frame() -> None:
    rate = rules.MessageRate("1/day", match=rules.json_type("x"), name="n" * 64)
    reason = rate._limited(86400.0).wire_reason
    assert reason == "rate_limited:" + "n" * 64 + "; retry-after=86400"
    assert len(reason.encode()) <= MAX_REASON_BYTES


def test_the_last_kind_lets_the_shared_parse_go() -> None:
    """An idle connection keeps no message alive for its JSON kinds."""
    kinds = [
        rules.MessageRate("5/second", match=rules.json_type(value), name=value)
        for value in ("typing", "chat")
    ]
    guard = Guard(rules=kinds, clock=Clock(0.0))
    conn: Any = SimpleNamespace(extra={}, guard=guard)
    checks = [rate.checker(conn) for rate in kinds]
    parse = conn.extra[LastParse]
    assert parse.kinds == 2
    message = {"type": "websocket.receive", "text": '{"type": "chat"}'}
    assert checks[0](message) is None  # typing: "chat" has no '"typing"': not parsed
    assert parse.payload is None
    message = {"type": "websocket.receive", "text": '{"type": "typing", "x": "chat"}'}
    assert checks[0](message) is None
    assert parse.payload is message["text"]  # parsed once, kept for the next kind
    assert checks[1](message) is None
    assert (parse.payload, parse.value) == (None, None)  # the last kind let it go


async def test_a_kind_on_a_shared_key_counts_across_the_users_connections() -> None:
    clock = Clock(0.0)
    guard = Guard(
        rules=[
            HeaderSubject(),
            rules.MessageRate(
                "3/minute", key=rules.by_user, match=rules.json_type("chat"), name="chat"
            ),
        ],
        clock=clock,
    )
    app = WSGuardMiddleware(echo, guard=guard)
    first, second, other = (
        await opened_as(app, "alice"),
        await opened_as(app, "alice"),
        await opened_as(app, "bob"),
    )
    await echoed(first, chat(), typing(), chat())
    await echoed(other, chat(), chat(), chat())  # bob's window is his own
    await echoed(second, typing(), chat())  # alice's third chat, from her other connection
    await second.send_text(chat())
    await second.expect("websocket.close", code=1008, reason="rate_limited:chat; retry-after=60")
    await second.finished()
    await echoed(first, typing())  # another kind still passes on the first connection
    for ws in (first, other):
        await ws.disconnect()
        await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"chat": 1}


async def opened_as(app: Any, name: str) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, client=("10.0.0.1", 40000), headers=user(name))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws
