"""Pattern's regex engine: RE2 when it can, re when asked or when it must, errors otherwise.

google-re2 is in the ``test`` extra, so these run the real RE2; its absence is
shown by blocking the import the way Python documents (``sys.modules[name] =
None`` makes ``import name`` raise ImportError).
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect

from tests.support.apps import echo
from tests.support.servers import serve
from tests.support.sites import closed_by_server
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.types import Message

pytest.importorskip("re2", reason="google-re2 is not installed (pip install 'ws-guard[re2]')")

#: Catastrophic backtracking in re: 13 s for 26 bytes on uvicorn (attack review).
EVIL = r"(\w+[\s.]?)+\.(zip|mov)\b"
EVIL_MESSAGE = "a" * 25 + "!"
#: A second shape of the same fault: nested quantifiers over one character.
EVIL_NESTED = r"(a+)+$"
EVIL_NESTED_MESSAGE = "a" * 30 + "!"


def text(value: str) -> Message:
    return {"type": "websocket.receive", "text": value}


def refuses(rule: rules.Pattern, value: str) -> bool:
    """Whether *rule* closes on a text message *value* (its breach is 1008 content:<name>)."""
    verdict = rule.check(text(value))
    if verdict is None:
        return False
    assert (verdict.code, verdict.reason) == (1008, f"content:{rule.content_name}")
    return True


@pytest.fixture
def no_re2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "re2", None)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ws_guard" and r.levelno == logging.WARNING
    ]


# -- engine selection ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"), [(EVIL, EVIL_MESSAGE), (EVIL_NESTED, EVIL_NESTED_MESSAGE)]
)
@pytest.mark.parametrize("engine", ["auto", "re2"])
def test_re2_searches_an_evil_pattern_in_linear_time(
    engine: str, pattern: str, message: str
) -> None:
    rule = rules.Pattern(pattern, engine=engine)
    assert rule.engine == "re2"
    assert rule.pattern is None
    started = time.perf_counter()
    assert not refuses(rule, message)
    assert not refuses(rule, message * 4000)  # ~100 KiB: still linear
    assert time.perf_counter() - started < 0.5  # re: seconds for the first alone
    assert refuses(rule, "holiday.photos.zip" if pattern == EVIL else "aaaa")


def test_auto_without_re2_uses_re_and_warns_once(
    no_re2: None, caplog: pytest.LogCaptureFixture
) -> None:
    rule = rules.Pattern("bad", name="bad_words")
    assert rule.engine == "re"
    assert isinstance(rule.pattern, re.Pattern)
    assert refuses(rule, "so bad")
    assert not refuses(rule, "good")
    [warning] = warnings(caplog)
    assert "'bad'" in warning
    assert "google-re2 is not installed" in warning


def test_re2_without_re2_is_a_configuration_error(no_re2: None) -> None:
    with pytest.raises(ConfigurationError, match=r"'bad'.*google-re2 is not installed"):
        rules.Pattern("bad", engine="re2")


def test_re_engine_runs_re_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    rule = rules.Pattern(r"\bspam$", engine="re")
    assert rule.engine == "re"
    assert rule.pattern == re.compile(r"\bspam$")
    assert refuses(rule, "spam\n")  # re's $ also matches before a final newline
    assert warnings(caplog) == []


def test_importing_ws_guard_does_not_import_re2() -> None:
    code = "import sys, ws_guard; from ws_guard import rules; print('re2' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


# -- what RE2 cannot run ---------------------------------------------------------------

NOT_RE2 = [
    pytest.param(r"(\w)\1", 0, "backreference", id="backreference"),
    pytest.param(r"(?P<q>['\"]).*(?P=q)", 0, "named backreference", id="named-backreference"),
    pytest.param(r"token(?=\d)", 0, "lookahead", id="lookahead"),
    pytest.param(r"(?<!no )spam", 0, "negative lookbehind", id="negative-lookbehind"),
    pytest.param(
        r"(?>a+)b",
        0,
        "atomic group",
        id="atomic-group",
        # re has atomic groups from 3.11 on; before, the fallback cannot compile it.
        marks=pytest.mark.skipif(sys.version_info < (3, 11), reason="re has (?>...) from 3.11"),
    ),
    pytest.param(r"a{2000}", 0, "repetition count over 1000", id="repetition"),
    pytest.param(r"spam  # a word", re.VERBOSE, "flag re.VERBOSE", id="verbose-flag"),
]


@pytest.mark.parametrize(("pattern", "flags", "feature"), NOT_RE2)
def test_re2_refuses_what_needs_backtracking_naming_pattern_and_feature(
    pattern: str, flags: int, feature: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        rules.Pattern(pattern, flags=flags, engine="re2")
    message = str(caught.value)
    assert repr(pattern) in message
    assert f"it uses {feature}" in message


@pytest.mark.parametrize(("pattern", "flags", "feature"), NOT_RE2)
def test_auto_falls_back_to_re_naming_pattern_and_feature(
    pattern: str, flags: int, feature: str, caplog: pytest.LogCaptureFixture
) -> None:
    rule = rules.Pattern(pattern, flags=flags)
    assert rule.engine == "re"
    assert rule.pattern == re.compile(pattern, flags)
    [warning] = warnings(caplog)
    assert repr(pattern) in warning
    assert f"it uses {feature}" in warning


def test_a_fallback_pattern_still_refuses_what_it_matches() -> None:
    rule = rules.Pattern(r"(\w)\1\1", name="triples")
    assert rule.engine == "re"
    assert refuses(rule, "zzz")
    assert not refuses(rule, "zz")


# -- flags and meaning -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "flags", "hits", "misses"),
    [
        ("drop table", re.IGNORECASE, ["DROP TABLE x", "Drop Table"], ["drop  table"]),
        ("^bad", re.MULTILINE, ["ok\nbad"], ["not bad"]),
        ("a.b", re.DOTALL, ["a\nb"], ["ab"]),
        ("a.b", 0, ["axb"], ["a\nb"]),
        ("(?i)café", 0, ["CAFÉ"], ["cafe"]),
        ("[0-9]{4}", re.ASCII, ["pin 1234"], ["pin 123"]),
    ],
)
def test_flags_mean_the_same_on_both_engines(
    pattern: str, flags: int, hits: list[str], misses: list[str]
) -> None:
    on_re2 = rules.Pattern(pattern, flags=flags, engine="re2")
    on_re = rules.Pattern(pattern, flags=flags, engine="re")
    for value in hits:
        assert refuses(on_re2, value), value
        assert refuses(on_re, value), value
    for value in misses:
        assert not refuses(on_re2, value), value
        assert not refuses(on_re, value), value


def test_a_compiled_pattern_brings_its_flags_to_re2() -> None:
    rule = rules.Pattern(re.compile("bad", re.IGNORECASE), engine="re2")
    assert rule.engine == "re2"
    assert refuses(rule, "so BAD")


def test_flags_beside_a_compiled_pattern_are_refused_not_ignored() -> None:
    with pytest.raises(ConfigurationError, match=r"re\.compile\('bad'\).*IGNORECASE"):
        rules.Pattern(re.compile("bad"), flags=re.IGNORECASE)


@pytest.mark.parametrize("engine", ["pcre", "RE2", "", None, 1])
def test_an_unknown_engine_is_a_configuration_error(engine: object) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(repr(engine))):
        rules.Pattern("x", engine=engine)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["auto", "re2", "re"])
def test_an_invalid_pattern_is_a_configuration_error_on_every_engine(engine: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape("'(unclosed'")):
        rules.Pattern("(unclosed", engine=engine)


@pytest.mark.parametrize(
    ("pattern", "flags", "expected"),
    [
        (r"\böl\b", 0, [r"\b match ASCII characters only"]),
        (r"\d+\s\w", 0, [r"\d \s \w match ASCII characters only"]),
        (r"end$", 0, ["$ matches only at the very end, not before a final newline"]),
        (r"\bend$", re.ASCII | re.MULTILINE, []),
        (r"[$]\\w", 0, []),  # a $ in a class is literal; \\ is an escaped backslash
        (r"\$5", 0, []),
        (r"[]\d]", 0, [r"\d match ASCII characters only"]),
    ],
)
def test_auto_warns_where_re2_would_match_differently(
    pattern: str, flags: int, expected: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    rule = rules.Pattern(pattern, flags=flags)
    assert rule.engine == "re2"
    found = warnings(caplog)
    if not expected:
        assert found == []
        return
    [warning] = found
    assert repr(pattern) in warning
    for difference in expected:
        assert difference in warning


def test_re2_engine_takes_re2_meaning_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    rule = rules.Pattern(r"\böl\b", engine="re2")
    assert not refuses(rule, "kein öl")  # RE2's \b is an ASCII word boundary
    assert refuses(rules.Pattern(r"\böl\b", engine="re"), "kein öl")
    assert warnings(caplog) == []


def test_a_lone_surrogate_is_searched_not_raised() -> None:
    # Real servers validate UTF-8; an in-process caller can still hand one over.
    rule = rules.Pattern("bad", engine="re2")
    assert refuses(rule, "\ud800bad")
    assert not refuses(rule, "\ud800ok")


# -- end to end: real uvicorn, real client ---------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("pattern", "evil", "matching"),
    [
        pytest.param(EVIL, EVIL_MESSAGE, "holiday.photos.zip", id="words-then-extension"),
        pytest.param(EVIL_NESTED, EVIL_NESTED_MESSAGE, "aaa", id="nested-plus"),
    ],
)
async def test_an_evil_message_stalls_no_one_on_re2(pattern: str, evil: str, matching: str) -> None:
    """The evil message echoes at once, a bystander's echo is not delayed, a match closes 1008."""
    guard = Guard(rules=[rules.Pattern(pattern, name="files", engine="re2")])
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        async with (
            connect(server.url, open_timeout=5) as attacker,
            connect(server.url, open_timeout=5) as bystander,
        ):
            started = time.monotonic()
            await attacker.send(evil)
            await bystander.send("hello")
            assert await asyncio.wait_for(bystander.recv(), 5) == "hello"
            bystander_delay = time.monotonic() - started
            assert await asyncio.wait_for(attacker.recv(), 5) == evil
            attacker_delay = time.monotonic() - started
            # re takes seconds on either message; RE2 microseconds (plus a loaded loop).
            assert bystander_delay < 1.0, bystander_delay
            assert attacker_delay < 1.0, attacker_delay

            started = time.monotonic()
            await attacker.send(matching)
            await closed_by_server(attacker)
            assert time.monotonic() - started < 1.0
            assert (attacker.close_code, attacker.close_reason) == (1008, "content:files")
            await bystander.send("still here?")
            assert await asyncio.wait_for(bystander.recv(), 5) == "still here?"
    assert dict(guard.metrics.snapshot().closes_by_rule) == {"content:files": 1}
