"""``ws_guard.codes``: one named constant per reason slug ws_guard sends, and nothing else.

The slugs the source sends are read from it by the AST scan of
tests/project/test_docs_reasons.py (every ``breach``/``Close`` call with a literal
slug, and the drain reasons); the documented ones from the "At a glance"
table of docs/close-codes.md. The three sets must be equal, so a new slug
cannot ship without its constant and its row, and a removed one leaves
neither behind. Outside codes.py the source spells no slug as a literal:
it sends each through its ``REASON_*`` constant.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.project.test_docs_reasons import FAMILIES, SENT, sent_by_ws_guard
from ws_guard import codes
from ws_guard.client import close_from_http

ROOT = Path(__file__).resolve().parents[2]
CLOSE_CODES_DOC = ROOT / "docs" / "close-codes.md"


def slug_constants() -> dict[str, str]:
    """``REASON_*`` name -> slug, for every slug constant in ``ws_guard.codes``."""
    return {
        name: value
        for name, value in vars(codes).items()
        if name.startswith("REASON_") and isinstance(value, str)
    }


def documented_slugs() -> dict[str, set[int]]:
    """Slug -> codes, from the "At a glance" table (``content:<name>`` as ``content:``)."""
    text = CLOSE_CODES_DOC.read_text(encoding="utf-8")
    table = text.split("## At a glance", 1)[1].split("\n## ", 1)[0]
    found: dict[str, set[int]] = {}
    for row in re.finditer(r"^\| (\d{4}) \| ([^|]*)\|", table, re.M):
        for reason in re.findall(r"`([^`]+)`", row[2]):
            slug = reason.partition(";")[0].strip()
            for family in FAMILIES:  # content:<name>, rate_limited:<name>
                slug = family if slug.startswith(family) else slug
            found.setdefault(slug, set()).add(int(row[1]))
    return found


def test_every_slug_the_source_sends_has_one_constant() -> None:
    constants = slug_constants()
    assert len(set(constants.values())) == len(constants), "two constants for one slug"
    assert set(constants.values()) == set(SENT.codes)


def test_every_slug_constant_is_documented_with_the_code_it_is_sent_with() -> None:
    documented = documented_slugs()
    assert set(documented) == set(slug_constants().values())
    assert documented == SENT.codes


def test_the_scan_reads_the_source_not_a_cache() -> None:
    """A fresh scan finds what the module-level one did (and the design's slugs)."""
    fresh = sent_by_ws_guard()
    assert fresh.codes == SENT.codes
    assert fresh.codes["overloaded"] == {codes.TRY_AGAIN_LATER}
    assert fresh.codes["going_away"] == {codes.GOING_AWAY}
    assert fresh.codes["content:"] == {codes.POLICY_VIOLATION}
    assert fresh.codes["rate_limited:"] == {codes.POLICY_VIOLATION}
    assert len(fresh.codes) == 27


def slug_literals(source: str) -> list[tuple[int, str]]:
    """(line, slug) of each string literal in *source* that spells a slug, docstrings aside."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and ast.get_docstring(node, clean=False) is not None
        and isinstance(node.body[0], ast.Expr)
    }
    slugs = set(slug_constants().values())
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and id(node) not in docstrings
        and isinstance(node.value, str)
        and node.value in slugs
    ]


def test_the_source_sends_slugs_through_their_constants() -> None:
    """A slug is spelt once, in codes.py; everywhere else it is a ``REASON_*`` name."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {slug!r}"
        for path in sorted((ROOT / "src" / "ws_guard").rglob("*.py"))
        if path.name != "codes.py" or path.parent.name != "ws_guard"
        for line, slug in slug_literals(path.read_text(encoding="utf-8"))
    ]
    assert not found, "use the REASON_* constant of ws_guard.codes:\n" + "\n".join(found)


def test_slug_literals_are_found_in_code_and_not_in_docstrings() -> None:
    source = (
        '"""A module about ``rate_limited``."""\n'
        "REASONS = {1: 'going_away', 2: REASON_RESTARTING}\n"
        "def f():\n"
        '    """Sends overloaded."""\n'
        "    return self.breach(1008, f'content:{name}'), Close(1011, 'internal_error', 'x')\n"
    )
    found = sorted(slug_literals(source))
    assert found == [(2, "going_away"), (5, "content:"), (5, "internal_error")]


def test_each_slug_comment_names_the_code_it_is_sent_with() -> None:
    """The ``#:`` line above each constant starts with the code the source sends it with."""
    lines = Path(codes.__file__).read_text(encoding="utf-8").splitlines()
    constants = slug_constants()
    for index, line in enumerate(lines):
        name = line.partition(" = ")[0]
        if name in constants:
            comment = lines[index - 1]
            assert comment.startswith("#: "), name
            stated = {int(c) for c in re.findall(r"\b(1\d{3})\b", comment.split(",", 1)[0])}
            assert stated == SENT.codes[constants[name]], (name, comment)


def test_codes_is_a_leaf_module() -> None:
    """Anything in ws_guard may import codes, so codes imports nothing from ws_guard."""
    tree = ast.parse(Path(codes.__file__).read_text(encoding="utf-8"))
    imported = [
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    ] + [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    assert imported == ["__future__"]


def test_reason_limit_and_codes_follow_rfc_6455() -> None:
    # Section 5.5: a control frame carries at most 125 bytes; 2 hold the code.
    assert codes.MAX_REASON_BYTES == 125 - 2
    named = {v for k, v in vars(codes).items() if k.isupper() and isinstance(v, int)}
    assert {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014} <= named
    assert (codes.NO_STATUS, codes.ABNORMAL_CLOSURE, codes.TLS_HANDSHAKE) == (1005, 1006, 1015)
    assert sorted(codes.RESERVED_CODES) == [1004, 1005, 1006, 1015]


def _body(size: int) -> bytes:
    """A ws_guard-shaped 403 body of exactly *size* bytes: a slug, then a padded hint."""
    head = "token_invalid; note="
    return (head + "x" * (size - len(head))).encode()


def test_the_client_keeps_a_refusal_body_up_to_the_reason_limit() -> None:
    # The client reads the limit from codes: a body that fits a close frame is
    # kept as the reason, one byte more is not a ws_guard reason.
    fits, over = _body(codes.MAX_REASON_BYTES), _body(codes.MAX_REASON_BYTES + 1)
    assert close_from_http(403, {}, fits) == (codes.POLICY_VIOLATION, fits.decode())
    assert close_from_http(403, {}, over) == (codes.POLICY_VIOLATION, "http_403")
    assert close_from_http(503, {}, over) == (codes.TRY_AGAIN_LATER, codes.REASON_OVERLOADED)
    assert close_from_http(429, {}, over) == (codes.TRY_AGAIN_LATER, codes.REASON_RATE_LIMITED)
