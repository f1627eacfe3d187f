"""JWT token sources: bad ``token=`` lists are refused; a JWKS rule survives a garbled header.

``JWTAuth(token=...)`` takes one source or a list with at most one in-band
source of each kind (the first message, the subprotocol): two would race
for the same token. With a JWKS endpoint the token's header is read before
any key is chosen (RFC 7515 section 4.1.4, ``kid``); a header that cannot be
read is ``token_invalid`` and never a key fetch. In process; the JWKS is a
real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.jwks_server import JWKSServer, new_rsa_key
from tests.support.jwt_keys import SECRET, mint
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket

SOURCES = "rules.from_query/from_header/from_cookie/from_subprotocol/from_first_message sources"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (5, "JWTAuth token must be a token source or a list, not 5"),
        ([], f"JWTAuth token must be {SOURCES}, not []"),
        (["token"], f"JWTAuth token must be {SOURCES}, not ['token']"),
        (
            [rules.from_subprotocol(), rules.from_subprotocol("bearer")],
            "JWTAuth takes at most one from_subprotocol source",
        ),
        (
            [rules.from_first_message(), rules.from_header(), rules.from_first_message(5)],
            "JWTAuth takes at most one from_first_message source",
        ),
    ],
)
def test_a_bad_token_list_is_refused(token: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.JWTAuth(SECRET, algorithms=["HS256"], token=token)  # type: ignore[arg-type]
    assert str(info.value) == message


KEY = new_rsa_key()


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    with JWKSServer() as server:
        server.publish(a=KEY)
        yield server


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "e30.e30.",  # "{}"."{}": a header with no alg
        "eyJhbGciOi.e30.sig",  # a header cut in the middle of its JSON
        "@@@.e30.sig",  # not base64url
    ],
)
async def test_jwks_a_token_whose_header_cannot_be_read_is_invalid(
    jwks_server: JWKSServer, token: str
) -> None:
    rule = rules.JWTAuth(algorithms=["RS256"], jwks_url=rules.JWKS(jwks_server.url))
    guard = Guard(rules=[rule])
    await guard.startup()
    try:
        ws = ScriptedWebSocket(
            WSGuardMiddleware(echo, guard=guard),
            headers=[(b"authorization", f"Bearer {token}".encode())],
        )
        await ws.connect()
        await ws.expect("websocket.accept")
        await ws.expect("websocket.close", code=1008, reason="token_invalid")
        await ws.finished()
        good = ScriptedWebSocket(
            WSGuardMiddleware(echo, guard=guard),
            headers=[
                (
                    b"authorization",
                    f"Bearer {mint(key=KEY, alg='RS256', headers={'kid': 'a'})}".encode(),
                )
            ],
        )
        await good.connect()
        await good.expect("websocket.accept")
        await good.send_text("ping")
        await good.expect("websocket.send", text="ping")  # the keys themselves are fine
        await good.disconnect()
        await good.finished()
    finally:
        await guard.shutdown()
    assert guard.metrics.snapshot().closes_by_rule == {"token_invalid": 1}


@pytest.mark.parametrize(
    ("make", "bad"),
    [
        (lambda: rules.from_header(scheme="Bearer\n"), "'Bearer\\n'"),
        (lambda: rules.from_subprotocol("access_token\n"), "'access_token\\n'"),
    ],
)
def test_token_source_words_with_a_trailing_newline_are_refused(make: Any, bad: str) -> None:
    """The same fault as a rule name: ``$`` matches before a final newline."""
    with pytest.raises(ConfigurationError) as info:
        make()
    assert bad in str(info.value)
