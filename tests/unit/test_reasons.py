"""Close reasons on the wire: slugs, retry hints, the 123-byte cut."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ws_guard import MAX_REASON_BYTES, Close, rules, truncate_reason
from ws_guard._core.decisions import format_retry_after
from ws_guard.codes import is_sendable_code


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("", ""),
        ("a" * 123, "a" * 123),
        ("a" * 124, "a" * 123),
        ("é" * 61, "é" * 61),  # 122 bytes
        ("é" * 62, "é" * 61),  # 124 bytes: the 62nd character would be split
        ("a" + "é" * 61, "a" + "é" * 61),  # exactly 123 bytes
        ("€" * 41, "€" * 41),  # 123 bytes
        ("€" * 42, "€" * 41),
        ("ab" + "€" * 41, "ab" + "€" * 40),  # 125 bytes: cut 2 bytes into a 3-byte character
        ("😀" * 31, "😀" * 30),  # 124 bytes -> 120
        ("abc" + "😀" * 30, "abc" + "😀" * 30),  # 123 bytes exactly
    ],
)
def test_truncate_reason(reason: str, expected: str) -> None:
    assert truncate_reason(reason) == expected
    assert len(truncate_reason(reason).encode()) <= MAX_REASON_BYTES


@given(st.text(max_size=200))
def test_truncate_reason_is_a_prefix_that_fits(reason: str) -> None:
    cut = truncate_reason(reason)
    assert reason.startswith(cut)
    assert len(cut.encode()) <= MAX_REASON_BYTES
    # nothing more could have fitted: the next character would cross the limit
    if cut != reason:
        assert len(reason[: len(cut) + 1].encode()) > MAX_REASON_BYTES


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0"), (0.001, "1"), (1.0, "1"), (1.5, "2"), (59.0001, "60"), (-3, "0")],
)
def test_retry_after_rounds_up(seconds: float, text: str) -> None:
    assert format_retry_after(seconds) == text


def test_wire_reason_adds_retry_hint_and_cuts() -> None:
    assert Close(1013, "overloaded", "overloaded", 1.2).wire_reason == "overloaded; retry-after=2"
    assert Close(1008, "rate_limited", "rate_limited").wire_reason == "rate_limited"
    long = Close(1013, "x" * 120, "x", 5)
    assert long.wire_reason == ("x" * 120 + "; retry-after=5")[:123]


def test_breach_labels_and_shadow() -> None:
    enforced = rules.MaxMessageSize(1)
    assert enforced.breach(1008, "rate_limited", 3) == Close(
        1008, "rate_limited", "rate_limited", 3
    )
    named = rules.MaxMessageSize(1, name="upload_cap", enforce=False)
    assert named.breach(1009, "message_too_big") == Close(
        1009, "message_too_big", "upload_cap", None, shadow=True
    )


def test_close_is_frozen() -> None:
    close = Close(1008, "x", "x")
    with pytest.raises(AttributeError):
        close.code = 1000  # type: ignore[misc]


@pytest.mark.parametrize("code", [1004, 1005, 1006, 1015, 0, 999, 1016, 2999, 5000, 1008.0, None])
def test_unsendable_codes(code: object) -> None:
    assert not is_sendable_code(code)
