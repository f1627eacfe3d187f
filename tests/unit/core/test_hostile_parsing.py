"""No client input raises out of ws_guard: every parser entry point returns a verdict.

Property tests feed arbitrary text and bytes, plus the shapes that break
``json.loads`` (deep nesting, over-long integers, NaN/Infinity, lone
surrogates, bytes that are not UTF-8), to every place ws_guard parses what a
client sent; scripted ASGI exchanges check the close each one earns, and
that a handler which swallows exceptions never reads past it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.jwt_keys import SECRET, mint
from ws_guard import Close, Guard, WSGuardMiddleware, rules
from ws_guard._core.connection import Connection
from ws_guard._core.fast_path import FusedRun
from ws_guard._json import MAX_DEPTH, Unreadable, nesting_depth, read_json
from ws_guard.rules.auth.refresh_matcher import refresh_matcher
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Message, Receive, Scope, Send

DEPTH = 3000  # ~6 KB: past CPython's default recursion limit (1000)


def nested(depth: int, kind: str = "[") -> str:
    if kind == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


def in_token(value: str) -> str:
    """``{"token": <value>}``: a first-message envelope around *value* (raw JSON)."""
    return '{"token": ' + value + "}"


def as_refresh(value: str) -> str:
    return '{"type": "auth.refresh", "token": ' + value + "}"


BIG_INT = "1" * 5000  # past sys.get_int_max_str_digits() (4300)

#: Raw JSON values that json.loads refuses or that are no token.
HOSTILE_VALUES = {
    "nested-arrays": nested(DEPTH),
    "nested-objects": nested(1400, "{"),  # 8.4 KB: a refresh stays within its envelope
    "huge-integer": BIG_INT,
    "nan": "NaN",
    "infinity": "Infinity",
    "minus-infinity": "-Infinity",
    "number": "123",
    "null": "null",
    "list": '["a.b.c"]',
    "object": '{"t": "a.b.c"}',
    "lone-surrogate": '"\\ud800.a.b"',
    "non-ascii": '"é.a.b"',
}

json_texts = st.one_of(
    st.text(),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    ).map(lambda v: json.dumps(v)),  # NaN/Infinity included: floats() makes them
    st.builds(nested, st.integers(0, 5000), st.sampled_from("[{")),
    st.integers(0, 6000).map(lambda n: "1" * max(n, 1)),
    st.sampled_from(list(HOSTILE_VALUES.values())),
)
payloads = st.one_of(
    json_texts, st.binary(), json_texts.map(lambda t: t.encode("utf-8", "surrogatepass"))
)


# -- property tests: a verdict for everything ------------------------------------------


@given(payloads)
@settings(max_examples=300, deadline=None)
def test_read_json_returns_a_value_or_a_reason(payload: str | bytes) -> None:
    value = read_json(payload)
    if not isinstance(value, Unreadable):
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        assert value == json.loads(text) or value != value  # NaN != NaN


@given(json_texts.map(in_token) | json_texts | st.binary())
@settings(max_examples=300, deadline=None)
def test_first_message_parse_never_raises(payload: str | bytes) -> None:
    source = rules.from_first_message(5)
    key = "bytes" if isinstance(payload, bytes) else "text"
    token = source.parse({"type": "websocket.receive", key: payload})
    assert token is None or isinstance(token, (str, Unreadable))


@given(json_texts.map(as_refresh) | json_texts)
@settings(max_examples=300, deadline=None)
def test_refresh_matcher_never_raises(text: str) -> None:
    match = refresh_matcher("auth.refresh", "token", 8192)
    assert match is not None
    token = match({"type": "websocket.receive", "text": text})
    assert token is None or isinstance(token, str)


@given(st.text(max_size=300) | json_texts.map(lambda t: t[:9000]))
@settings(max_examples=300, deadline=None)
def test_verify_now_is_a_verdict_for_any_token(token: str) -> None:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"])
    outcome = rule.verify_now(token)
    assert outcome in (rule.invalid, rule.expired) or isinstance(outcome, dict)


@given(st.binary(max_size=200), st.binary(max_size=200), st.lists(st.text(max_size=20)))
@settings(max_examples=300, deadline=None)
def test_handshake_sources_and_request_data_never_raise(
    query: bytes, header: bytes, subprotocols: list[str]
) -> None:
    guard = Guard(trusted_proxies=["127.0.0.1"])
    scope: dict[str, Any] = {
        "type": "websocket",
        "path": "/ws",
        "query_string": query,
        "headers": [
            (b"authorization", header),
            (b"cookie", header),
            (b"x-forwarded-for", header),
            (b"sec-websocket-protocol", header),
        ],
        "client": ("127.0.0.1", 1),
        "subprotocols": subprotocols,
    }
    conn = Connection(guard, scope, _never, _never)
    assert isinstance(conn.client_ip, str)
    assert isinstance(conn.query, dict)
    assert conn.header("cookie") is not None
    for source in (
        rules.from_query("token"),
        rules.from_header(),
        rules.from_header("cookie", scheme=None),
        rules.from_cookie("session"),
        rules.from_subprotocol(),
    ):
        token = source.take(conn)
        assert token is None or isinstance(token, str)


@given(payloads)
@settings(max_examples=200, deadline=None)
def test_content_rules_return_a_verdict(payload: str | bytes) -> None:
    checks = [
        rules.Json().check,
        rules.Json(lambda v: isinstance(v, dict), name="obj").check,
        rules.Pattern(r"a+b").check,
        rules.Content(lambda p: len(p) % 2 == 0, name="even").check,
        FusedRun([rules.MaxMessageSize(1 << 20), rules.Json(), rules.Pattern("x")]).checker(
            _bare_connection()
        ),
    ]
    key = "bytes" if isinstance(payload, bytes) else "text"
    message = {"type": "websocket.receive", key: payload}
    for check in checks:
        verdict = check(message)
        assert verdict is None or isinstance(verdict, Close)


def test_json_refuses_what_json_loads_cannot_read_or_rfc_8259_forbids() -> None:
    check = rules.Json().check
    for value in ("nested-arrays", "nested-objects", "huge-integer", "nan", "infinity"):
        verdict = check({"type": "websocket.receive", "text": HOSTILE_VALUES[value]})
        assert verdict is not None, value
        assert verdict.reason == "content:json", value
    assert check({"type": "websocket.receive", "bytes": b'{"a": "\xff"}'}) is not None
    assert check({"type": "websocket.receive", "text": nested(50)}) is None  # not deep: JSON


@pytest.mark.parametrize("kind", ["[", "{"])
def test_json_nesting_limit_is_exact_and_the_same_on_every_python(kind: str) -> None:
    # Python 3.12+ parses 3,000 levels that 3.11 refuses: ws_guard's own limit decides.
    assert MAX_DEPTH == 64
    assert not isinstance(read_json(nested(MAX_DEPTH, kind)), Unreadable)
    assert read_json(nested(MAX_DEPTH + 1, kind)) is Unreadable.REFUSED
    assert read_json(nested(DEPTH, kind)) is Unreadable.REFUSED
    # Brackets inside strings, escaped quotes included, do not nest.
    quoted = json.dumps("[" * 200 + '\\"' + "{" * 200)
    assert read_json(f"[{quoted}]") == [json.loads(quoted)]
    assert nesting_depth(f'[{quoted}, [{{"a": [1]}}]]') == 4


#: 64 KB of unclosed strings that spell escaped quotes, behind enough brackets
#: to be scanned for depth: each escaped quote once opened a string that
#: rescanned the rest of the text (quadratic, 20 s per message).
UNCLOSED_STRINGS = {
    "escaped-quotes": "[" * 65 + '"' + '\\"' * 32_000,
    "escaped-quotes-lone-backslash": "[" * 65 + '"' + '\\"' * 32_000 + "\\",
    "quote-backslash": "[" * 65 + '"\\' * 32_000,
    "after-the-brackets": '"' + '\\"' * 32_000 + "[" * 65,
}


@pytest.mark.parametrize("name", sorted(UNCLOSED_STRINGS))
def test_json_depth_scan_is_linear_in_hostile_strings(name: str) -> None:
    text = UNCLOSED_STRINGS[name]
    for payload in (text, text.encode("utf-8")):
        started = time.perf_counter()
        result = read_json(payload)
        elapsed = time.perf_counter() - started
        assert isinstance(result, Unreadable), name
        # Linear: about 10 ms here; quadratic took 20 s. The bound leaves room for load.
        assert elapsed < 1.0, (name, elapsed)


def test_an_unclosed_string_runs_to_the_end_of_the_text() -> None:
    # Brackets after an unclosed quote are inside it: the text is no JSON either way.
    assert nesting_depth('[["a' + "[" * 100) == 2
    assert nesting_depth('[["a\\') == 2  # a lone backslash last
    assert nesting_depth('[["a\\"[[') == 2  # an escaped quote does not close it
    assert read_json('[["a' + "[" * 100) is Unreadable.NOT_JSON


def test_a_json_kind_reads_a_hostile_string_in_linear_time() -> None:
    kind = rules.json_type("chat")
    text = UNCLOSED_STRINGS["escaped-quotes"]
    started = time.perf_counter()
    assert not kind({"type": "websocket.receive", "text": text})
    assert not kind({"type": "websocket.receive", "bytes": text.encode()})
    assert time.perf_counter() - started < 2.0


async def _never() -> Message:
    raise AssertionError("not called")


def _bare_connection() -> Connection:
    return Connection(Guard(), {"type": "websocket", "path": "/ws"}, _never, _never)


# -- scripted exchanges: the close each input earns -----------------------------------------


async def swallowing(scope: Scope, receive: Receive, send: Send) -> None:
    """A handler that catches every exception from receive() and reads on (records all)."""
    seen: list[Any] = scope.setdefault("seen", [])
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        try:
            message = await receive()
        except Exception as exc:  # what a careless app does
            seen.append(exc)
            continue
        seen.append(message)
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": f"got {message.get('text')}"})


def first_message_guard(*, fused: bool) -> Guard:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_first_message(5))
    return Guard(rules=[rule] if fused else [Passes(), rule])


class Passes(rules.Rule):
    """A check ahead of auth: the connection takes the plain (not compiled) receive."""

    stage = rules.Stage.CONNECT_RATE

    def checker(self, conn: Connection) -> Any:
        return lambda message: None


async def exchange(guard: Guard, *messages: Message, **socket: Any) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(WSGuardMiddleware(swallowing, guard=guard), **socket)
    await ws.connect()
    await ws.expect("websocket.accept")
    for message in messages:
        await ws._incoming.put(message)
    return ws


def text(value: str) -> Message:
    return {"type": "websocket.receive", "text": value}


FIRST_MESSAGES = [
    *(pytest.param(text(in_token(v)), id=k) for k, v in HOSTILE_VALUES.items()),
    pytest.param(text(nested(DEPTH)), id="bare-nested"),
    pytest.param(text("[1, 2]"), id="top-level-list"),
    pytest.param(text(in_token('""')), id="empty-token"),
    pytest.param({"type": "websocket.receive", "bytes": b"\xff\xfe" + b"a" * 40}, id="not-utf8"),
    pytest.param(
        {"type": "websocket.receive", "bytes": in_token(nested(DEPTH)).encode()}, id="binary-nested"
    ),
]


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
@pytest.mark.parametrize("first", FIRST_MESSAGES)
async def test_a_hostile_first_message_is_token_invalid(first: Message, fused: bool) -> None:
    guard = first_message_guard(fused=fused)
    ws = await exchange(guard, first, text("later"))
    await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.finished()
    assert ws.scope["seen"] == [
        {"type": "websocket.disconnect", "code": 1008, "reason": "token_invalid"}
    ]
    assert guard.metrics.snapshot().closes_by_rule == {"token_invalid": 1}
    assert len(guard.scheduler) == 0  # the first-message timeout went with the verdict


REFRESHES = [
    *(pytest.param(as_refresh(v), id=k) for k, v in HOSTILE_VALUES.items()),
    pytest.param(
        as_refresh('"' + mint("alice") + '"')[:-1] + ', "x": ' + nested(DEPTH) + "}",
        id="deep-sibling",
    ),
]


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
@pytest.mark.parametrize("refresh", REFRESHES)
async def test_a_hostile_refresh_is_token_invalid(refresh: str, fused: bool) -> None:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_header())
    guard = Guard(rules=[rule] if fused else [Passes(), rule])
    header = [(b"authorization", f"Bearer {mint('alice')}".encode())]
    ws = await exchange(guard, text(refresh), text("later"), headers=header)
    await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.finished()
    assert ws.scope["seen"] == [
        {"type": "websocket.disconnect", "code": 1008, "reason": "token_invalid"}
    ]


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
@pytest.mark.parametrize(
    "message",
    [
        *(
            pytest.param(text(HOSTILE_VALUES[k]), id=k)
            for k in ("nested-arrays", "nested-objects", "huge-integer", "nan", "infinity")
        ),
        pytest.param({"type": "websocket.receive", "bytes": b"\xff\xfe"}, id="not-utf8"),
    ],
)
async def test_json_rule_closes_content_name(message: Message, fused: bool) -> None:
    json_rule = rules.Json(name="envelope")
    guard = Guard(rules=[json_rule] if fused else [Passes(), json_rule])
    ws = await exchange(guard, text('{"ok": 1}'), message, text("later"))
    await ws.expect("websocket.send", text='got {"ok": 1}')
    await ws.expect("websocket.close", code=1008, reason="content:envelope")
    await ws.finished()
    assert ws.scope["seen"][1:] == [
        {"type": "websocket.disconnect", "code": 1008, "reason": "content:envelope"}
    ]


@pytest.mark.parametrize("fused", [True, False], ids=["compiled", "plain"])
async def test_a_raising_user_check_closes_1011_and_is_logged_once(
    fused: bool, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(payload: object) -> bool:
        return int(payload) >= 0  # type: ignore[call-overload]  # the user's bug: ValueError

    content = rules.Content(broken, name="mine")
    guard = Guard(rules=[content] if fused else [Passes(), content])
    ws = await exchange(guard, text("1"), text(nested(DEPTH)), text("later"))
    await ws.expect("websocket.send", text="got 1")
    await ws.expect("websocket.close", code=1011, reason="internal_error")
    await ws.finished()
    assert ws.scope["seen"][1:] == [
        {"type": "websocket.disconnect", "code": 1011, "reason": "internal_error"}
    ]
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1011: 1}
    assert snap.closes_by_rule == {"content:mine": 1}
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is ValueError


async def test_a_raising_refresh_matcher_closes_1011() -> None:
    def matcher(message: Message) -> str | None:
        return str(json.loads(message["text"])["jwt"])  # KeyError for most messages

    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_header(), refresh=matcher)
    header = [(b"authorization", f"Bearer {mint('alice')}".encode())]
    ws = await exchange(Guard(rules=[rule]), text("{}"), text("later"), headers=header)
    await ws.expect("websocket.close", code=1011, reason="internal_error")
    await ws.finished()
    assert ws.scope["seen"] == [
        {"type": "websocket.disconnect", "code": 1011, "reason": "internal_error"}
    ]


async def test_an_absent_field_is_still_token_missing() -> None:
    ws = await exchange(first_message_guard(fused=True), text('{"type": "auth"}'))
    await ws.expect("websocket.close", code=1008, reason="token_missing")
    await ws.finished()


async def test_the_session_check_consumes_without_raising() -> None:
    """The session's check itself, called directly with each hostile first message."""
    guard = first_message_guard(fused=True)
    ws = await exchange(guard)
    conn = next(iter(guard.live_connections))
    (session,) = conn.extra.values()
    for value in HOSTILE_VALUES.values():
        session.pending = True
        verdict = session.check(text(in_token(value)))
        assert isinstance(verdict, Close)
        assert verdict.reason == "token_invalid"
    await ws.disconnect()
    await ws.finished(timeout=5)
