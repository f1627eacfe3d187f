"""Every close reason the docs mention is spelled exactly as ws_guard sends it.

The reasons ws_guard can send are read from its source, not listed here: each
``breach(code, slug[, retry])`` and ``Close(code, slug, rule[, retry])``
call whose slug is a literal or a ``REASON_*`` constant of ``ws_guard.codes``
(``REASON_X`` or ``codes.REASON_X``), the ``content:<name>`` family, and the
drain reasons. A call that passes a retry value sends the slug with the hint, whose
spelling is taken from ``Close.wire_reason`` itself.

Scanned: README.md, docs/*.md, and the docstrings and comments of examples/
and src/. A mention is a close code followed by a reason (``1008
token_expired``, ``**1008** `token_expired```, a table row ``| 1008 |
`token_expired` |``), or any ``retry-after=`` hint. It must name a reason the
code sends with that code, with the hint exactly when the code sends one
(``rate_limited; retry-after=<seconds>`` or a whole number of seconds).
Reasons that the docs' own example rules define (``self.breach(1008,
"bad_origin")`` in a code block) count as sent.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ws_guard import codes as _close
from ws_guard._core.decisions import Close
from ws_guard._core.drain import DRAIN_REASONS
from ws_guard.rules.messages import _RULE_NAME

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "ws_guard"
PLACEHOLDER = "<seconds>"
#: Reason families: a fixed prefix and a rule's name (``content:no_links``).
FAMILIES = ("content:", "rate_limited:")


def hint_prefix() -> str:
    """What ``Close.wire_reason`` puts between the slug and the seconds."""
    wire = Close(1013, "slug", "slug", 7.0).wire_reason
    assert wire.startswith("slug")
    assert wire.endswith("7")
    return wire[len("slug") : -1]


HINT = hint_prefix()  # "; retry-after="


@dataclass
class Sent:
    """Reasons ws_guard sends: slug -> close codes, and which carry the hint."""

    codes: dict[str, set[int]] = field(default_factory=dict)
    hinted: set[str] = field(default_factory=set)
    plain: set[str] = field(default_factory=set)

    def add(self, slug: str, code: int, hinted: bool) -> None:
        self.codes.setdefault(slug, set()).add(code)
        (self.hinted if hinted else self.plain).add(slug)


def _codes_name(node: ast.expr) -> str | None:
    """``X`` for a bare name ``X`` or an attribute ``codes.X``, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr if node.value.id == "codes" else None
    return None


def _code_value(node: ast.expr) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    name = _codes_name(node)
    if name is not None and isinstance(getattr(_close, name, None), int):
        return int(getattr(_close, name))
    return None


def _slug_value(node: ast.expr) -> str | None:
    """A literal slug, or the value of the ``REASON_*`` constant *node* names.

    A ``REASON_*`` name that ``ws_guard.codes`` lacks raises, so a slug
    sent through a misspelt constant is never silently left out of the scan.
    """
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]  # f"content:{name}": the family's fixed prefix
        if isinstance(node, ast.FormattedValue):  # f"{REASON_CONTENT_PREFIX}{name}"
            node = node.value
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    name = _codes_name(node)
    if name is None or not name.startswith("REASON_"):
        return None
    value = getattr(_close, name, None)
    if not isinstance(value, str):
        raise LookupError(f"ws_guard.codes has no reason slug {name}")
    return value


def _has_retry(call: ast.Call, position: int) -> bool:
    values = [*call.args[position : position + 1]]
    values += [kw.value for kw in call.keywords if kw.arg == "retry_after"]
    return any(not (isinstance(v, ast.Constant) and v.value is None) for v in values)


def collect_breaches(tree: ast.AST, sent: Sent) -> None:
    """Add every ``breach``/``Close`` call in *tree* with a literal or ``REASON_*`` slug."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or len(node.args) < 2:
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name not in ("breach", "Close"):
            continue
        code, slug = _code_value(node.args[0]), _slug_value(node.args[1])
        if code is None or slug is None:
            continue
        sent.add(slug, code, _has_retry(node, 2 if name == "breach" else 3))


def sent_by_ws_guard() -> Sent:
    sent = Sent()
    for path in sorted(SRC.rglob("*.py")):
        collect_breaches(ast.parse(path.read_text(encoding="utf-8")), sent)
    for code, slug in DRAIN_REASONS.items():  # Drain.close_for_one always adds its hint
        sent.add(slug, code, hinted=True)
    return sent


SENT = sent_by_ws_guard()


def test_reasons_are_read_from_the_code() -> None:
    """The scan finds what the design names, so the checks below are not empty."""
    assert {"rate_limited", "connect_rate_limited", "overloaded", "restarting"} <= SENT.hinted
    assert {"message_too_big", "unsupported_data", "token_expired", "internal_error"} <= SENT.plain
    assert SENT.codes["overloaded"] == {1013}
    assert SENT.codes["unsupported_data"] == {1003}
    assert HINT == "; retry-after="


def test_scan_resolves_reason_constants() -> None:
    """Slugs sent through ``REASON_*`` constants count as the literals they stand for."""
    sent = Sent()
    source = (
        "self.breach(POLICY_VIOLATION, REASON_RATE_LIMITED, retry)\n"
        "Close(codes.TRY_AGAIN_LATER, codes.REASON_OVERLOADED, REASON_OVERLOADED, 3.0)\n"
        "self.breach(POLICY_VIOLATION, f'{REASON_CONTENT_PREFIX}{name}')\n"
        "self.breach(1003, 'unsupported_data')\n"
        "self.breach(1008, reason)\n"  # not a slug the scan can read: left out
        "self.breach(1008, other.REASON_TOKEN_STALE)\n"  # not ws_guard.codes: left out
    )
    collect_breaches(ast.parse(source), sent)
    assert sent.codes == {
        "rate_limited": {1008},
        "overloaded": {1013},
        "content:": {1008},
        "unsupported_data": {1003},
    }
    assert sent.hinted == {"rate_limited", "overloaded"}
    assert sent.plain == {"content:", "unsupported_data"}


def test_scan_refuses_an_unknown_reason_constant() -> None:
    with pytest.raises(LookupError, match="REASON_RATE_LIMTED"):
        collect_breaches(ast.parse("self.breach(1008, REASON_RATE_LIMTED)"), Sent())


# -- the text that is scanned ------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """A piece of prose to scan, with where it starts for messages."""

    path: Path
    line: int
    text: str


#: Written by benchmarks/soak.py; its tables count closes by (code, rule label).
GENERATED = {ROOT / "docs" / "soak-report.md"}


def markdown_files() -> list[Path]:
    docs = sorted(set((ROOT / "docs").glob("*.md")) - GENERATED)
    return [ROOT / "README.md", *docs]


def python_prose(path: Path) -> list[Text]:
    """The docstrings and comments of a Python file."""
    source = path.read_text(encoding="utf-8")
    found: list[Text] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                found.append(Text(path, node.body[0].lineno, docstring))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found.append(Text(path, token.start[0], token.string))
    return found


def scanned_texts() -> list[Text]:
    texts = [Text(p, 1, p.read_text(encoding="utf-8")) for p in markdown_files()]
    for directory in (ROOT / "examples", SRC):
        for path in sorted(directory.rglob("*.py")):
            texts.extend(python_prose(path))
    return texts


def example_rule_reasons() -> Sent:
    """Reasons the docs' own example rules send (``self.breach(...)`` in code blocks)."""
    sent = Sent()
    for path in markdown_files():
        for block in re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            try:
                tree = ast.parse(block)
            except SyntaxError:
                continue
            collect_breaches(tree, sent)
    return sent


# -- mentions ---------------------------------------------------------------------

_END = r"\s`|,)\]\"'*"
_REASON = rf"[a-z][a-z0-9_]*(?::[^{_END};]+)?(?:\s*;\s*[A-Za-z_-]+\s*[=:]\s*[^{_END};]*)*"
#: A close code, then (in the same code span, after bold, or in the next table cell) a reason.
_CODE_REASON = re.compile(
    rf"(?<![\w.=/-])(?P<code>10\d\d|[34]\d\d\d)(?:\*\*)?(?:[ \t]+|[ \t]*\|[ \t]*)"
    rf"(?:\*\*)?(?P<tick>`{{0,2}})(?P<reason>{_REASON})"
)
#: Further reasons listed after the first: "`token_invalid` / `token_missing`".
_MORE = re.compile(rf"`?[ \t]*(?:,|/|\bor\b)[ \t]*`(?P<reason>{_REASON})`")
#: Any retry hint, with the slug before it if there is one.
_HINT = re.compile(
    rf"(?P<reason>(?:[a-z][a-z0-9_]*(?::[^{_END};]+)?)?\s*;\s*retry[-_]after\b[^{_END}]*)"
)


def _other_sender(text: str, match: re.Match[str]) -> bool:
    """A code span of words (``1009 `frame exceeds limit…```) quotes a server, not ws_guard."""
    end = text.find(match["tick"], match.start("reason"))
    span = text[match.start("reason") : end if end >= 0 else None]
    return " " in span.split(";", 1)[0] and not span.startswith(FAMILIES)


def _trim(reason: str) -> str:
    """The reason without the spaces or the full stop of the sentence around it."""
    return reason.strip().removesuffix(".")


def _looks_like_reason(text: str, ticked: bool) -> bool:
    """A code span after a code is always a reason; bare prose only when slug-shaped."""
    slug = text.split(";", 1)[0].strip()
    return ticked or ";" in text or "_" in slug or ":" in slug or slug in SENT.codes


def check_reason(reason: str, code: int | None, examples: Sent) -> str | None:
    """Why *reason* (sent with *code*, if given) is not a wire form, or None."""
    slug, sep, _ = reason.partition(";")
    slug = slug.strip()
    family = next((f for f in FAMILIES if slug.startswith(f)), None)
    if family is not None:
        name = slug.removeprefix(family)
        if name != "<name>" and not _RULE_NAME.fullmatch(name):
            return f"{family} reasons are spelled '{family}<name>' or {family}<rule name>"
        codes, hinted = SENT.codes[family], family in SENT.hinted
    elif slug in SENT.codes:
        codes, hinted = SENT.codes[slug], slug in SENT.hinted
    elif slug in examples.codes:
        codes, hinted = examples.codes[slug], slug in examples.hinted
    elif slug == "" and sep:
        codes, hinted = set(), True  # the hint on its own: "a `; retry-after=<seconds>` hint"
    else:
        return "ws_guard sends no such reason"
    if code is not None and codes and code not in codes:
        return f"ws_guard sends {slug!r} with {sorted(codes)}, not {code}"
    if not hinted and sep:
        return f"ws_guard sends {slug!r} without a retry hint"
    if hinted and code is not None and not sep:
        return f"ws_guard always sends {slug!r} with its hint: '{slug}{HINT}{PLACEHOLDER}'"
    if sep:
        value = reason[len(slug) :]
        if not value.startswith(HINT) or not re.fullmatch(
            rf"{re.escape(PLACEHOLDER)}|\d+(?:\.\d)?", value[len(HINT) :]
        ):
            return f"the hint is spelled '{HINT}{PLACEHOLDER}' or '{HINT}<seconds to a tenth>'"
    return None


def misspellings() -> list[str]:
    examples = example_rule_reasons()
    problems: list[str] = []
    for text in scanned_texts():

        def report(start: int, mention: str, why: str | None, text: Text = text) -> None:
            if why is not None:
                line = text.line + text.text.count("\n", 0, start)
                rel = text.path.relative_to(ROOT)
                problems.append(f"{rel}:{line}: {mention!r}: {why}")

        for match in _CODE_REASON.finditer(text.text):
            reason, code = _trim(match["reason"]), int(match["code"])
            if not _looks_like_reason(reason, bool(match["tick"])):
                continue
            if match["tick"] and _other_sender(text.text, match):
                continue
            report(match.start(), match[0], check_reason(reason, code, examples))
            position = match.end()
            while more := _MORE.match(text.text, position):
                report(more.start(), more[0], check_reason(_trim(more["reason"]), code, examples))
                position = more.end()
        for match in _HINT.finditer(text.text):
            reason = _trim(match["reason"])
            report(match.start(), reason, check_reason(reason, None, examples))
    return problems


def test_every_close_reason_mention_is_a_wire_form() -> None:
    problems = misspellings()
    assert not problems, "close reasons the code does not send:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("reason", "code", "ok"),
    [
        ("rate_limited; retry-after=<seconds>", 1008, True),
        ("rate_limited; retry-after=1", 1008, True),
        ("overloaded; retry-after=<seconds>", 1013, True),
        ("restarting; retry-after=12", 1012, True),
        ("message_too_big", 1009, True),
        ("content:no_links", 1008, True),
        ("content:<name>", 1008, True),
        ("; retry-after=<seconds>", None, True),
        ("overloaded", None, True),  # a rule label, not a wire mention
        ("overloaded; retry-after=<s>", 1013, False),
        ("overloaded; retry-after=N", 1013, False),
        ("overloaded; retry_after=3", 1013, False),
        ("overloaded;retry-after=3", 1013, False),
        ("overloaded; retry-after=2.5", 1013, True),  # a jittered hint: tenths
        ("overloaded; retry-after=2.55", 1013, False),
        ("overloaded", 1013, False),  # on the wire it always carries the hint
        ("overloaded; retry-after=3", 1008, False),  # wrong code
        ("message_too_big; retry-after=1", 1009, False),
        ("content:<rule name>", 1008, False),
        ("rate_limit", 1008, False),
        ("rate_limited:chat; retry-after=1", 1008, True),
        ("rate_limited:<name>; retry-after=<seconds>", 1008, True),
        ("rate_limited:chat", 1008, False),  # on the wire it always carries the hint
        ("rate_limited:has space; retry-after=1", 1008, False),
    ],
)
def test_check_reason(reason: str, code: int | None, ok: bool) -> None:
    assert (check_reason(reason, code, Sent()) is None) is ok


def test_scanner_finds_each_mention_form() -> None:
    """The mention forms the docs use are all seen (a bad one in each is reported)."""
    text = (
        "gets `1013 overloaded; retry-after=N` and\n"
        "| 1008 | `rate_limited` | too fast |\n"
        "**1008** `token_expired; retry-after=1`, and 1008 `token_invalid` / `token_mising`\n"
        "# 1012 restarting, spread over 2 s\n"
        "a `restarting; retry-after=<s>` close\n"
    )
    found: list[tuple[int, str | None]] = []
    for match in _CODE_REASON.finditer(text):
        found.append(
            (int(match["code"]), check_reason(match["reason"], int(match["code"]), Sent()))
        )
        position = match.end()
        while more := _MORE.match(text, position):
            found.append((0, check_reason(more["reason"], int(match["code"]), Sent())))
            position = more.end()
    hints = [check_reason(m["reason"].strip(), None, Sent()) for m in _HINT.finditer(text)]
    assert [code for code, _ in found] == [1013, 1008, 1008, 1008, 0, 1012]
    assert [why is None for _, why in found] == [False, False, False, True, False, False]
    assert [why is None for why in hints] == [False, False, False]
