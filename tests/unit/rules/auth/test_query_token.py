"""``from_query``: the token read in one pass is the one ``parse_qsl`` reads, for any query."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ws_guard.rules.auth.redaction import redact_query
from ws_guard.rules.auth.tokens import INVALID_TOKEN, FromQuery

#: Pieces a query is made of: the separators, escapes (of the name's letters,
#: of ``=`` and ``&``, of UTF-8), ``+``, a raw latin-1 byte, letters of the name.
PIECES = st.sampled_from(
    [b"&", b"=", b"%", b"+", b"%74", b"%6F", b"%3D", b"%26", b"%C3%A9", b"%zz", b"\xe9", b" ",
     b"t", b"o", b"k", b"e", b"n", b"token", b"x", b"1", b"ab.cd"]
)  # fmt: skip
QUERIES = st.lists(PIECES, max_size=14).map(b"".join)


def reference(raw: bytes, name: str) -> str | None:
    """What the source read before: ``parse_qsl`` over the latin-1 query, every value of *name*."""
    values = [v for k, v in parse_qsl(raw.decode("latin-1"), keep_blank_values=True) if k == name]
    if not values:
        return None
    if any(v != values[0] for v in values):
        return INVALID_TOKEN
    return values[0] or None


def take(raw: bytes, name: str, redact: bool = True) -> tuple[str | None, dict[str, Any]]:
    scope: dict[str, Any] = {"query_string": raw, "raw_path": b"/ws?" + raw}
    token = FromQuery(name, redact=redact).take(SimpleNamespace(scope=scope))  # type: ignore[arg-type]
    return token, scope


@given(QUERIES, st.sampled_from(["token", "to ken", "é", "t%", "a=b"]))
@example(b"token=a&%74oken=a", "token")  # an escaped name is the same parameter
@example(b"token=a&token=b", "token")  # two different values: invalid
@example(b"token", "token")  # no "=": a blank value, so no token
@example(b"token=a+b%2Bc%C3%A9", "token")  # "+", escapes, UTF-8
@example(b"token=\xe9", "token")  # a raw byte reads as latin-1
@example(b"to+ken=x", "to ken")
def test_the_token_is_the_one_parse_qsl_finds(raw: bytes, name: str) -> None:
    token, scope = take(raw, name)
    assert token == reference(raw, name)
    expected = dict(query_string=raw, raw_path=b"/ws?" + raw)
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    if any(key == name for key, _ in pairs):
        redact_query(expected, name)  # what the source always did once it found the name
    assert scope == expected


@pytest.mark.parametrize(
    ("raw", "token", "seen"),
    [
        (b"room=7&token=abc&x=", "abc", b"room=7&token=redacted&x="),
        (b"%74oken=abc&token=abc", "abc", b"%74oken=redacted&token=redacted"),
        (b"token=a&token=b", INVALID_TOKEN, b"token=redacted&token=redacted"),
        (b"tokens=abc&xtoken=abc", None, b"tokens=abc&xtoken=abc"),
        (b"token=a%2Bb+c", "a+b c", b"token=redacted"),
    ],
)
def test_exact_tokens_and_redactions(raw: bytes, token: str | None, seen: bytes) -> None:
    assert take(raw, "token") == (token, {"query_string": seen, "raw_path": b"/ws?" + seen})
    kept, scope = take(raw, "token", redact=False)
    assert (kept, scope["query_string"]) == (token, raw)
