"""Message rules: exact limits, codes, reasons, order, shadow, delivery."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.apps import Recorder
from tests.support.helpers import Checks
from ws_guard import CONSUME, Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Message


def text(value: str) -> Message:
    return {"type": "websocket.receive", "text": value}


def data(value: bytes) -> Message:
    return {"type": "websocket.receive", "bytes": value}


async def first_close(guard: Guard, *messages: Message) -> tuple[Message | None, Recorder]:
    """Send *messages*; return the guard's close (None if all passed) and the app."""
    app = Recorder()
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    for message in messages:
        await ws._incoming.put(dict(message))
        reply = await ws.next()
        if reply["type"] == "websocket.close":
            await ws.finished()
            return reply, app
        assert reply["type"] == "websocket.send"
    await ws.disconnect()
    await ws.finished()
    return None, app


# -- MaxMessageSize -----------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "message", "breach"),
    [
        (4, text("abcd"), False),
        (4, text("abcde"), True),
        (4, data(b"1234"), False),
        (4, data(b"12345"), True),
        (4, text("éé"), False),  # 4 bytes
        (4, text("éé."), True),  # 5 bytes, 3 characters
        (4, text("😀"), False),  # 4 bytes, 1 character
        (4, text("a😀"), True),
        (6, text("€€"), False),  # 6 bytes
        (6, text("€€a"), True),
        (1, text(""), False),
        (1, data(b""), False),
        (5, {"type": "websocket.receive", "bytes": None, "text": "hello"}, False),
        (5, {"type": "websocket.receive", "bytes": b"123456", "text": None}, True),
    ],
)
def test_max_message_size_exact(limit: int, message: Message, breach: bool) -> None:
    rule = rules.MaxMessageSize(limit)
    verdict = rule.check(message)
    if breach:
        assert verdict is not None
        assert (verdict.code, verdict.reason, verdict.rule) == (
            1009,
            "message_too_big",
            "message_too_big",
        )
    else:
        assert verdict is None


@given(st.integers(min_value=1, max_value=64), st.text(max_size=40))
def test_max_message_size_matches_utf8_length(limit: int, value: str) -> None:
    size = len(value.encode("utf-8", "surrogatepass"))
    assert (rules.MaxMessageSize(limit).check(text(value)) is not None) is (size > limit)


@given(st.integers(min_value=1, max_value=64), st.binary(max_size=80))
def test_max_message_size_bytes_property(limit: int, value: bytes) -> None:
    assert (rules.MaxMessageSize(limit).check(data(value)) is not None) is (len(value) > limit)


async def test_max_message_size_through_the_middleware_at_and_over_the_limit() -> None:
    close, app = await first_close(
        Guard(rules=[rules.MaxMessageSize(6)]), text("€€"), data(b"123456"), text("€€a")
    )
    assert close == {"type": "websocket.close", "code": 1009, "reason": "message_too_big"}
    assert app.received[1:] == [
        text("€€"),
        data(b"123456"),
        {"type": "websocket.disconnect", "code": 1009, "reason": "message_too_big"},
    ]


# -- MessageTypes -------------------------------------------------------------


async def test_text_only_refuses_binary_with_1003() -> None:
    close, app = await first_close(
        Guard(rules=[rules.MessageTypes(binary=False)]), text("ok"), data(b"\x00")
    )
    assert close == {"type": "websocket.close", "code": 1003, "reason": "unsupported_data"}
    assert app.received[1] == text("ok")


async def test_binary_only_refuses_text_with_1003() -> None:
    close, app = await first_close(
        Guard(rules=[rules.MessageTypes(text=False)]), data(b"ok"), text("no")
    )
    assert close == {"type": "websocket.close", "code": 1003, "reason": "unsupported_data"}
    assert app.received[1] == data(b"ok")


def test_message_types_reads_messages_with_both_keys() -> None:
    # hypercorn sends both keys, the unused one as None.
    text_only = rules.MessageTypes(binary=False).checker(None)  # type: ignore[arg-type]
    binary_only = rules.MessageTypes(text=False).checker(None)  # type: ignore[arg-type]
    assert text_only is not None
    assert binary_only is not None
    as_text = {"type": "websocket.receive", "bytes": None, "text": "x"}
    as_bytes = {"type": "websocket.receive", "bytes": b"x", "text": None}
    assert text_only(as_text) is None
    assert text_only(as_bytes) is not None
    assert binary_only(as_bytes) is None
    assert binary_only(as_text) is not None
    assert rules.MessageTypes().checker(None) is None  # type: ignore[arg-type]


# -- Content, Pattern, Json -----------------------------------------------------


async def test_content_breach_is_1008_with_rule_name() -> None:
    seen: list[Any] = []

    def no_links(payload: Any) -> bool:
        seen.append(payload)
        return not (isinstance(payload, str) and "http://" in payload)

    guard = Guard(rules=[rules.Content(no_links, name="no_links")])
    close, _ = await first_close(guard, text("hi"), data(b"http://"), text("see http://x"))
    assert close == {"type": "websocket.close", "code": 1008, "reason": "content:no_links"}
    assert seen == ["hi", b"http://", "see http://x"]
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_rule) == {"content:no_links": 1}
    assert dict(snap.closes_by_code) == {1008: 1}


@pytest.mark.parametrize(
    ("rule", "messages", "reason"),
    [
        (rules.Pattern(r"drop\s+table", flags=re.I), [text("DROP  TABLE x")], "content:pattern"),
        (rules.Pattern(re.compile("bad"), name="bad_words"), [text("so bad")], "content:bad_words"),
        (
            rules.Pattern("bad"),
            [data(b"bad bytes are not searched"), text("bad")],
            "content:pattern",
        ),
        (rules.Json(), [text('{"a": 1}'), text("{not json")], "content:json"),
        (rules.Json(), [data(b'{"a": 1}'), data(b'{"a": "\xff"}')], "content:json"),
        (rules.Json(), [text("[]"), text("")], "content:json"),
        (
            rules.Json(lambda v: isinstance(v, dict) and "op" in v, name="op"),
            [text('{"op": "send"}'), data(b'{"op": 1}'), text('{"nop": 1}')],
            "content:op",
        ),
        (rules.Json(lambda v: v == 1, name="one"), [text("1"), text("2")], "content:one"),
    ],
)
async def test_content_conveniences(rule: rules.Rule, messages: list[Message], reason: str) -> None:
    close, app = await first_close(Guard(rules=[rule]), *messages)
    assert close == {"type": "websocket.close", "code": 1008, "reason": reason}
    assert app.received[1:-1] == messages[:-1]  # all but the last were delivered


def test_json_accepts_valid_utf8_bytes_and_refuses_invalid() -> None:
    check = rules.Json().check
    assert check(data('{"ü": "ß"}'.encode())) is None
    assert check(data(b"\xff\xfe\xfd")) is not None
    assert check(data(b'"\xc3"')) is not None  # a cut multi-byte character


# -- order, consume, delivery ----------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        (rules.MaxMessageSize(4), rules.MessageTypes(binary=False), 1009),
        (rules.MessageTypes(binary=False), rules.MaxMessageSize(4), 1003),
    ],
)
async def test_first_breaching_rule_in_user_order_decides(
    first: rules.Rule, second: rules.Rule, code: int
) -> None:
    close, _ = await first_close(Guard(rules=[first, second]), data(b"too long"))
    assert close is not None
    assert close["code"] == code


class InBandToken(rules.Rule):
    """Consumes ``auth:`` messages before the other rules see them."""

    stage = rules.Stage.AUTH

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[str] = []

    def checker(self, conn: Any) -> Any:
        def check(message: Message) -> Any:
            value = message.get("text")
            if value is not None and value.startswith("auth:"):
                self.tokens.append(value)
                return CONSUME
            return None

        return check


async def test_consumed_messages_never_reach_app_or_later_rules() -> None:
    token = InBandToken()
    guard = Guard(rules=[rules.MaxMessageSize(8), token])  # AUTH stage runs first
    app = Recorder()
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("auth:a-long-token-value")
    await ws.send_text("hello")
    await ws.expect("websocket.send", text="hello")
    await ws.disconnect()
    await ws.finished()
    assert token.tokens == ["auth:a-long-token-value"]
    assert app.received[1:] == [
        text("hello"),
        {"type": "websocket.disconnect", "code": 1000, "reason": ""},
    ]
    assert guard.metrics.snapshot().closes_by_rule == {}


async def test_passing_messages_are_delivered_once_in_order() -> None:
    guard = Guard(
        rules=[
            rules.MaxMessageSize(64),
            rules.MessageTypes(),
            rules.Content(lambda p: True, name="all"),
            rules.Pattern("forbidden"),
            Checks(lambda m: None),
        ]
    )
    app = Recorder()
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    sent: list[Message] = []
    for i in range(200):
        message = text(f"m{i}") if i % 3 else data(i.to_bytes(2, "big"))
        sent.append(message)
        await ws._incoming.put(dict(message))
    for message in sent:
        reply = await ws.next()
        assert reply == {
            "type": "websocket.send",
            **{k: v for k, v in message.items() if k != "type"},
        }
    await ws.disconnect()
    await ws.finished()
    assert app.received[1:-1] == sent
    assert guard.metrics.snapshot().closes_by_code == {1000: 1}


async def test_non_receive_messages_are_not_checked() -> None:
    calls: list[Message] = []
    guard = Guard(rules=[Checks(lambda m: calls.append(m))])
    close, _ = await first_close(guard, text("a"))
    assert close is None
    assert calls == [text("a")]  # neither connect nor disconnect went through checks
