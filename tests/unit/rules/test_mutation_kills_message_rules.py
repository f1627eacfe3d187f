"""Message rules (``rules/messages.py``): the exact values mutation testing found unchecked.

Default names and their close reasons, the ``name``/``enforce`` each rule
passes on, the attributes a rule exposes, the configuration messages, and
the log line of a content check that raises.
"""

from __future__ import annotations

import logging
import re

import pytest

from ws_guard import ConfigurationError, rules
from ws_guard._core.decisions import Close
from ws_guard.types import Message


def text(payload: str) -> Message:
    return {"type": "websocket.receive", "text": payload}


def binary(payload: bytes) -> Message:
    return {"type": "websocket.receive", "bytes": payload}


@pytest.mark.parametrize("value", [0, -3, 1.5, "64"])
def test_max_message_size_names_itself_and_the_bad_value(value: object) -> None:
    with pytest.raises(ConfigurationError) as raised:
        rules.MaxMessageSize(value)  # type: ignore[arg-type]
    assert (
        str(raised.value) == f"MaxMessageSize max_bytes must be a positive integer, not {value!r}"
    )


def test_message_types_refusing_everything_says_so() -> None:
    with pytest.raises(ConfigurationError) as raised:
        rules.MessageTypes(text=False, binary=False)
    assert str(raised.value) == "MessageTypes(text=False, binary=False) would refuse every message"


@pytest.mark.parametrize(
    ("options", "refused"),
    [({"binary": False}, binary(b"x")), ({"text": False}, text("x"))],
)
def test_message_types_closes_under_its_given_name(
    options: dict[str, bool], refused: Message
) -> None:
    rule = rules.MessageTypes(**options, name="frames")
    assert rule.check is not None
    assert rule.check(refused) == Close(1003, "unsupported_data", "frames")
    shadow = rules.MessageTypes(**options, enforce=False)
    assert shadow.check is not None
    assert shadow.check(refused) == Close(1003, "unsupported_data", "unsupported_data", None, True)


def test_pattern_default_name_engine_and_compiled_pattern() -> None:
    rule = rules.Pattern(r"https?://", engine="re")
    assert rule.check(text("see http://x")) == Close(1008, "content:pattern", "content:pattern")
    assert rule.check(text("no link")) is None
    assert rule.engine == "re"
    assert isinstance(rule.pattern, re.Pattern)
    assert rule.pattern.pattern == r"https?://"


def test_pattern_in_shadow_mode_reports_a_shadow_breach() -> None:
    rule = rules.Pattern("bad", name="words", engine="re", enforce=False)
    assert rule.check(text("bad")) == Close(1008, "content:words", "content:words", None, True)


def test_json_default_name_validator_and_shadow_mode() -> None:
    def validator(value: object) -> bool:
        return value == {"ok": True}

    rule = rules.Json(validator)
    assert rule.validator is validator
    assert rule.check(text('{"ok": true}')) is None
    assert rule.check(text('{"ok": false}')) == Close(1008, "content:json", "content:json")
    assert rule.check(text("not json")) == Close(1008, "content:json", "content:json")
    assert rules.Json().validator is None
    shadow = rules.Json(enforce=False)
    assert shadow.check(binary(b"\xff")) == Close(1008, "content:json", "content:json", None, True)


def test_a_raising_content_check_is_logged_once_with_its_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(payload: object) -> bool:
        raise ValueError("bug in the check")

    rule = rules.Content(broken, name="broken")
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        assert rule.check(text("x")) == Close(1011, "internal_error", "content:broken")
    records = [r for r in caplog.records if r.name == "ws_guard"]
    assert [r.getMessage() for r in records] == [
        "ws_guard content rule 'broken' raised; closing 1011"
    ]
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], ValueError)
