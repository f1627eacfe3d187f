"""``rules.Pattern`` flags are checked, and a negated class with a leading ``]`` is read right.

``flags`` must be ``re`` flags: a string such as ``"i"`` or a bool would be
silently wrong. RE2's ``\\d`` is ASCII-only (RE2 syntax), so under
``engine="auto"`` a warning names it, also inside a negated class that opens
with a literal ``]`` (``[^]\\d]``), where a scanner that took that ``]`` as
the class's end would miss it. In process; google-re2 is installed.
"""

from __future__ import annotations

import logging
import re

import pytest

from ws_guard import ConfigurationError, rules


@pytest.mark.parametrize("flags", ["i", True, 1.5, None])
def test_flags_that_are_not_re_flags_are_refused(flags: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.Pattern("spam", flags=flags)  # type: ignore[arg-type]
    assert str(info.value) == f"Pattern flags must be re flags, not {flags!r}"


@pytest.mark.parametrize(
    ("pattern", "warned"),
    [
        (r"[^]\d]+", True),  # the class goes on past the leading ]: \d is inside it
        (r"[^]]\d", True),
        (r"[^]x]", False),
        (r"[^]$]x", False),  # the $ is in the class: a literal, on both engines
    ],
)
def test_a_leading_bracket_in_a_negated_class_is_a_literal(
    pattern: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    rule = rules.Pattern(pattern)
    assert rule.engine == "re2"
    found = [
        r.getMessage()
        for r in caplog.records
        if r.name == "ws_guard" and r.levelno == logging.WARNING
    ]
    if warned:
        [warning] = found
        assert repr(pattern) in warning
        assert r"\d match ASCII characters only" in warning
    else:
        assert found == []


def test_flags_with_a_compiled_pattern_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"already compiled: give flags to re.compile"):
        rules.Pattern(re.compile("spam"), flags=re.IGNORECASE)
