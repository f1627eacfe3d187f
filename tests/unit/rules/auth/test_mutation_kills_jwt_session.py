"""Auth session (``rules/auth/session.py``): the exact behaviour mutation testing found unchecked.

The first message's size limit at its boundary (text and binary), a
handshake token with a first-message source configured, the expiring
notice's edge cases, shadow mode around the first-message timeout, a
raising refresh matcher's log line, and an in-band refresh or first
message whose key fetch fails, under both storage-error policies. In
process, on injected clocks; the JWKS endpoint is a real HTTP server on
127.0.0.1 (tests/support/jwks_server.py).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.jwks_server import JWKSServer, new_rsa_key
from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import SECRET, mint
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.rules.auth.refresh_matcher import ENVELOPE_BYTES, refresh_matcher
from ws_guard.testing import ManualClock as Clock
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import ASGIApp, Message

T0 = 1000.0
#: The smallest max_token_bytes JWTAuth takes: the first-message limit is this + 1 KiB.
MAX_TOKEN = 256
LIMIT = MAX_TOKEN + ENVELOPE_BYTES

KEY_A = new_rsa_key()
KEY_B = new_rsa_key()


def setup(app: ASGIApp = echo, **options: Any) -> tuple[Guard, WSGuardMiddleware, Clock]:
    options.setdefault("algorithms", ["HS256"])
    clock = Clock(T0)
    guard = Guard(rules=[rules.JWTAuth(SECRET, **options)], clock=clock, app_exit_timeout=None)
    return guard, WSGuardMiddleware(app, guard=guard), clock


async def accepted(app: WSGuardMiddleware, **kwargs: Any) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, **kwargs)
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


def padded_envelope(size: int) -> str:
    """A JSON first message of exactly *size* characters around a valid token."""
    body = {"type": "auth", "token": mint("fm", exp_in=60), "pad": ""}
    body["pad"] = "x" * (size - len(json.dumps(body)))
    text = json.dumps(body)
    assert len(text) == size
    return text


@pytest.mark.parametrize("kind", ["text", "bytes"])
@pytest.mark.parametrize(("size", "verdict"), [(LIMIT, "accepted"), (LIMIT + 1, "token_invalid")])
async def test_first_message_size_limit_is_max_token_bytes_plus_the_envelope(
    kind: str, size: int, verdict: str
) -> None:
    guard, app, _ = setup(app=whoami, token=rules.from_first_message(5), max_token_bytes=MAX_TOKEN)
    ws = await accepted(app)
    payload = padded_envelope(size)
    if kind == "text":
        await ws.send_text(payload)
    else:
        await ws.send_bytes(payload.encode())
    if verdict == "accepted":
        await ws.send_text("hello")
        assert json.loads((await ws.expect("websocket.send"))["text"])["sub"] == "fm"
        await ws.expect("websocket.send", text="hello")
        await ws.disconnect()
    else:
        await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == (
        {} if verdict == "accepted" else {"token_invalid": 1}
    )


async def test_a_handshake_token_starts_no_first_message_timeout() -> None:
    guard, app, clock = setup(token=[rules.from_header(), rules.from_first_message(5)])
    token = mint("hdr", exp_in=60)
    ws = await accepted(app, headers=[(b"authorization", f"Bearer {token}".encode())])
    assert len(guard.scheduler) == 1  # the expiry only
    clock.now = T0 + 30  # far past the first-message timeout
    assert guard.scheduler.run_due() == 0
    await ws.send_text("still here")
    await ws.expect("websocket.send", text="still here")
    await ws.disconnect()
    await ws.finished()


async def test_no_notice_for_a_token_that_expires_sooner_than_the_notice() -> None:
    guard, app, _ = setup(expiring_notice=10)
    token = mint(exp_in=5)
    ws = await accepted(app, headers=[(b"authorization", f"Bearer {token}".encode())])
    assert len(guard.scheduler) == 1  # the expiry; a notice would already be late
    await ws.disconnect()
    await ws.finished()


async def test_a_notice_under_half_a_second_before_expiry_says_in_0() -> None:
    guard, app, clock = setup(expiring_notice=0.4)
    token = mint(exp_in=60)
    ws = await accepted(app, headers=[(b"authorization", f"Bearer {token}".encode())])
    expiry = T0 + (int(json.loads(_claims(token))["exp"]) - time.time())
    clock.now = expiry - 0.3
    assert guard.scheduler.run_due() == 1
    notice = await ws.expect("websocket.send")
    assert json.loads(notice["text"]) == {"type": "auth.expiring", "in": 0}
    await ws.disconnect()
    await ws.finished()


def _claims(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


async def test_shadow_first_message_timeout_lets_the_next_message_through() -> None:
    guard, app, clock = setup(token=rules.from_first_message(5), enforce=False)
    ws = await accepted(app)
    clock.now = T0 + 5
    assert guard.scheduler.run_due() == 1
    await ws.send_text("hello")  # no longer taken for a token
    await ws.expect("websocket.send", text="hello")
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"token_missing": 1}
    assert snap.closes_by_rule == {}


async def test_shadow_bad_first_message_cancels_the_timeout() -> None:
    guard, app, clock = setup(token=rules.from_first_message(5), enforce=False)
    ws = await accepted(app)
    await ws.send_text("junk")  # consumed: a shadow token_invalid
    await ws.send_text("hello")
    await ws.expect("websocket.send", text="hello")
    clock.now = T0 + 60
    assert guard.scheduler.run_due() == 0  # the first-message timeout went with it
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"token_invalid": 1}


async def test_a_raising_refresh_matcher_closes_1011_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def matcher(message: Message) -> str | None:
        raise KeyError("bug in the matcher")

    _, app, _ = setup(refresh=matcher)
    token = mint(exp_in=60)
    ws = await accepted(app, headers=[(b"authorization", f"Bearer {token}".encode())])
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        await ws.send_text("anything")
        await ws.expect("websocket.close", code=1011, reason="internal_error")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["ws_guard: the JWTAuth refresh matcher raised"]
    assert errors[0].exc_info is not None
    await ws.disconnect(1011)
    await ws.finished()


def rs(key: object, kid: str, sub: str = "alice") -> str:
    return mint(sub, key=key, alg="RS256", headers={"kid": kid}, exp_in=600)


def jwks_guard(url: str, clock: Clock, policy: str, **options: Any) -> Guard:
    source = rules.JWKS(url, clock=clock, cooldown=30, retry=0)
    rule = rules.JWTAuth(algorithms=["RS256"], jwks_url=source, **options)
    return Guard(rules=[rule], on_storage_error=policy)


@pytest.mark.parametrize(
    ("policy", "close"),
    [("allow", None), ("deny", {"code": 1013, "reason": "storage_unavailable"})],
)
async def test_a_refresh_whose_key_fetch_fails_follows_the_policy(
    policy: str, close: dict[str, Any] | None
) -> None:
    clock = Clock(0.0)
    with JWKSServer() as server:
        server.publish(a=KEY_A)
        guard = jwks_guard(server.url, clock, policy)
        await guard.startup()
        ws = await accepted(
            WSGuardMiddleware(echo, guard=guard),
            headers=[(b"authorization", f"Bearer {rs(KEY_A, 'a')}".encode())],
        )
    clock.now = 31  # past the cooldown; the endpoint is gone
    await ws.send_text(json.dumps({"type": "auth.refresh", "token": rs(KEY_B, "b")}))
    await ws.send_text("after")
    if close is None:  # allow: the connection keeps its deadline and lives on
        await ws.expect("websocket.send", text="after", timeout=10)
        await ws.disconnect()
    else:
        await ws.expect("websocket.close", timeout=10, **close)
        await ws.disconnect(close["code"])
    await ws.finished()
    assert guard.metrics.snapshot().storage_errors == 1
    await guard.shutdown()


@pytest.mark.parametrize(
    ("policy", "close"),
    [
        ("allow", {"code": 1008, "reason": "token_invalid"}),
        ("deny", {"code": 1013, "reason": "storage_unavailable"}),
    ],
)
async def test_a_first_message_whose_key_fetch_fails_follows_the_policy(
    policy: str, close: dict[str, Any]
) -> None:
    with JWKSServer() as server:
        url = server.url  # the endpoint is gone before the first message
    guard = jwks_guard(url, Clock(0.0), policy, token=rules.from_first_message(5))
    ws = await accepted(WSGuardMiddleware(echo, guard=guard))
    await ws.send_text(rs(KEY_A, "a"))
    await ws.expect("websocket.close", timeout=10, **close)
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_code == {close["code"]: 1}


@pytest.mark.parametrize("field", ["", 3])
def test_a_refresh_field_that_is_no_name_is_refused(field: object) -> None:
    with pytest.raises(ConfigurationError) as raised:
        rules.JWTAuth(SECRET, algorithms=["HS256"], refresh_field=field)  # type: ignore[arg-type]
    assert str(raised.value) == f"JWTAuth refresh_field must be a name, not {field!r}"


def refresh_of_size(size: int, token: str) -> str:
    """A refresh message of exactly *size* characters."""
    body = {"type": "auth.refresh", "token": token, "pad": ""}
    body["pad"] = "x" * (size - len(json.dumps(body)))
    text = json.dumps(body)
    assert len(text) == size
    return text


@pytest.mark.parametrize(("size", "is_refresh"), [(LIMIT, True), (LIMIT + 1, False)])
async def test_a_refresh_message_may_be_max_token_bytes_plus_the_envelope(
    size: int, is_refresh: bool
) -> None:
    _, app, _ = setup(max_token_bytes=MAX_TOKEN)
    ws = await accepted(app, headers=[(b"authorization", f"Bearer {mint(exp_in=60)}".encode())])
    message = refresh_of_size(size, mint(exp_in=600, gen=2))
    await ws.send_text(message)
    await ws.send_text("after")
    if not is_refresh:  # bigger: app content, delivered as it is
        await ws.expect("websocket.send", text=message)
    await ws.expect("websocket.send", text="after")
    assert ws.scope["ws_guard"].claims.get("gen") == (2 if is_refresh else None)
    await ws.disconnect()
    await ws.finished()


async def test_binary_and_escaped_type_messages_are_app_content_under_refresh() -> None:
    guard, app, _ = setup()
    ws = await accepted(app, headers=[(b"authorization", f"Bearer {mint(exp_in=60)}".encode())])
    await ws.send_bytes(b'{"type": "auth.refresh"}')
    await ws.expect("websocket.send", bytes=b'{"type": "auth.refresh"}')
    # JSON for the same type, escaped: the substring prefilter decides, app content.
    escaped = json.dumps({"type": "auth\\u002erefresh", "token": mint(exp_in=600)}).replace(
        "\\\\", "\\"
    )
    assert json.loads(escaped)["type"] == "auth.refresh"
    await ws.send_text(escaped)
    await ws.expect("websocket.send", text=escaped)
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_code == {1000: 1}


async def test_a_refresh_to_an_earlier_exp_is_stale_and_keeps_expiry_and_notice() -> None:
    # A refresh must move the deadline on (docs/auth.md); one that would shorten
    # it, here past the notice, is refused and the armed timers stay as they were.
    guard, app, _clock = setup(expiring_notice=10)
    ws = await accepted(app, headers=[(b"authorization", f"Bearer {mint(exp_in=60)}".encode())])
    assert len(guard.scheduler) == 2  # expiry and notice
    await ws.send_text(json.dumps({"type": "auth.refresh", "token": mint(exp_in=5)}))
    await ws.expect("websocket.close", code=1008, reason="token_stale")
    await ws.disconnect(1008)
    await ws.finished()
    assert len(guard.scheduler) == 0
    assert guard.metrics.snapshot().closes_by_rule == {"token_stale": 1}


def test_the_refresh_matcher_itself_leaves_binary_and_escaped_types_alone() -> None:
    # The fused message path filters before calling the matcher; rule-by-rule
    # plans (shadow mode, other orders) call it on every message.
    match = refresh_matcher("auth.refresh", "token", MAX_TOKEN)
    assert match is not None
    token = mint(exp_in=600)
    assert match({"type": "websocket.receive", "bytes": b'"auth.refresh"'}) is None
    escaped = '{"type": "auth\\u002erefresh", "token": "' + token + '"}'
    assert match({"type": "websocket.receive", "text": escaped}) is None
    plain = json.dumps({"type": "auth.refresh", "token": token})
    assert match({"type": "websocket.receive", "text": plain}) == token


async def test_shadow_timeout_then_a_refresh_without_sub_is_not_applied() -> None:
    # No subject to compare, so the refresh cannot take effect (docs/auth.md);
    # in shadow mode the connection lives on, unauthenticated.
    guard, app, clock = setup(token=rules.from_first_message(5), enforce=False)
    ws = await accepted(app)
    clock.now = T0 + 5
    assert guard.scheduler.run_due() == 1  # shadow token_missing; pending no more
    await ws.send_text(json.dumps({"type": "auth.refresh", "token": mint(None, exp_in=600)}))
    await ws.send_text("hello")
    await ws.expect("websocket.send", text="hello")
    info = ws.scope["ws_guard"]
    assert info.subject is None
    assert info.claims is None
    assert len(guard.scheduler) == 0  # no expiry armed from the refused token
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {
        "token_missing": 1,
        "token_invalid": 1,
    }
