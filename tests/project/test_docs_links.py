"""README.md's links work on the package index too.

The package index renders README.md without the repository around it, so a
relative link (``docs/guide.md``) leads nowhere there. Every link in the
README is therefore absolute; the ones into this repository point at
``https://github.com/ws-guard/ws-guard/blob/main/<path>`` (``tree/main`` for a
folder), the repository pyproject.toml names, and must name a file or folder
that exists here, and a heading that exists in it when they carry an anchor.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
REPOSITORY = "https://github.com/ws-guard/ws-guard"
BLOB = f"{REPOSITORY}/blob/main/"
TREE = f"{REPOSITORY}/tree/main/"

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_INLINE = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
_DEFINITION = re.compile(r"^ {0,3}\[([^\]]+)\]:\s*<?(\S*?)>?(?:\s+[\"'(].*)?$", re.M)
_REFERENCE = re.compile(r"\[(?:[^\]\\]|\\.)*\]\[([^\]]*)\]")
_AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*)>")
_HTML_URL = re.compile(r"\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)
_SCHEME = re.compile(r"^(https?|mailto):", re.I)


@dataclass(frozen=True)
class Link:
    line: int
    url: str
    kind: str


def prose(markdown: str) -> str:
    """*markdown* with code blocks, code spans and comments blanked (lines kept)."""

    def blank(match: re.Match[str]) -> str:
        return re.sub(r"[^\n]", " ", match[0])

    for pattern in (_FENCE, _HTML_COMMENT, _CODE_SPAN):
        markdown = pattern.sub(blank, markdown)
    return markdown


def links(markdown: str) -> tuple[list[Link], dict[str, str], list[tuple[int, str]]]:
    """(every link target, reference definitions by label, reference uses)."""
    text = prose(markdown)

    def line(position: int) -> int:
        return text.count("\n", 0, position) + 1

    found = [Link(line(m.start()), m[1], "inline") for m in _INLINE.finditer(text)]
    found += [Link(line(m.start()), m[1], "autolink") for m in _AUTOLINK.finditer(text)]
    found += [Link(line(m.start()), m[1], "html") for m in _HTML_URL.finditer(text)]
    definitions: dict[str, str] = {}
    for match in _DEFINITION.finditer(text):
        definitions[match[1].strip().lower()] = match[2]
        found.append(Link(line(match.start()), match[2], f"definition [{match[1]}]"))
    uses = []
    for match in _REFERENCE.finditer(text):
        label = match[1] or match[0][1 : match[0].index("]")]  # [text][] uses the text
        uses.append((line(match.start()), label.strip().lower()))
    return found, definitions, uses


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of *markdown*.

    Lower case; letters, digits, ``-``, ``_`` and spaces kept, spaces become
    ``-``; a repeated heading gets ``-1``, ``-2``, ... (GitHub's rendering).
    """
    original = markdown.splitlines()
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for number, line in enumerate(prose(markdown).splitlines()):
        if not re.match(r"^#{1,6}[ \t]", line):  # headings outside code blocks
            continue
        title = original[number].strip().strip("#").strip()
        slug = "".join(
            ch for ch in title.lower() if ch in " -_" or unicodedata.category(ch)[0] in "LN"
        ).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def problems(markdown: str, root: Path) -> list[str]:
    found, definitions, uses = links(markdown)
    out: list[str] = []
    for link in found:
        where = f"README.md:{link.line}: {link.kind} {link.url!r}"
        if not _SCHEME.match(link.url):
            out.append(f"{where}: relative; the package index cannot follow it")
            continue
        if link.url.startswith(f"{REPOSITORY}/") and not link.url.startswith((BLOB, TREE)):
            if not re.match(rf"{re.escape(REPOSITORY)}/(issues|pulls|releases)\b", link.url):
                out.append(f"{where}: into the repository, but not at blob/main or tree/main")
            continue
        for prefix, wanted in ((BLOB, "file"), (TREE, "folder")):
            if not link.url.startswith(prefix):
                continue
            path, _, anchor = link.url.removeprefix(prefix).partition("#")
            target = root / path
            exists = target.is_file() if wanted == "file" else target.is_dir()
            if not path or not exists:
                out.append(f"{where}: no {wanted} {path!r} in the repository")
            elif (
                anchor
                and target.suffix == ".md"
                and anchor not in github_anchors(target.read_text(encoding="utf-8"))
            ):
                out.append(f"{where}: {path} has no heading for #{anchor}")
    for number, label in uses:
        if label not in definitions:
            out.append(f"README.md:{number}: [{label}] is used but not defined")
    used = {label for _, label in uses}
    for label in definitions:
        if label not in used:
            out.append(f"README.md: [{label}] is defined but not used")
    return out


def test_readme_links_are_absolute_and_exist() -> None:
    found = problems(README.read_text(encoding="utf-8"), ROOT)
    assert not found, "README.md links:\n" + "\n".join(found)


def test_readme_names_the_repository_pyproject_names() -> None:
    """One base URL: the README's links and pyproject's Project-URLs agree."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    urls = re.search(r"^\[project\.urls\]\n(.*?)(?=^\[|\Z)", pyproject, re.M | re.S)
    if urls is None:
        pytest.skip("pyproject.toml has no [project.urls] yet")
    named = dict(re.findall(r'^(\w+)\s*=\s*"([^"]*)"', urls[1], re.M))
    assert named.get("Repository") == REPOSITORY
    readme = README.read_text(encoding="utf-8")
    assert BLOB in readme


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("see [guide](docs/guide.md)\n", ["relative"]),
        ("see [guide][g]\n\n[g]: docs/guide.md\n", ["relative"]),
        ('<a href="docs/guide.md">guide</a>\n', ["relative"]),
        ("see [top](#why)\n", ["relative"]),
        (f"see [g]({BLOB}docs/nowhere.md)\n", ["no file"]),
        (f"see [g]({BLOB}docs/guide.md#no-such-heading)\n", ["no heading"]),
        (f"see [g]({TREE}nowhere)\n", ["no folder"]),
        ("see [g][missing]\n", ["not defined"]),
        (f"[unused]: {BLOB}README.md\n", ["not used"]),
        (f"see [g]({REPOSITORY}/raw/main/README.md)\n", ["not at blob/main"]),
        ("`[code](docs/guide.md)` and\n```md\n[x](docs/a.md)\n```\n", []),
        (f"see [g]({BLOB}docs/guide.md#fastapi) and <https://example.com/>\n", []),
        (f"see [g]({TREE}docs) and [h]({BLOB}docs/close-codes.md#1011-internal-error)\n", []),
    ],
)
def test_link_check_catches(markdown: str, expected: list[str]) -> None:
    found = problems(markdown, ROOT)
    assert len(found) == len(expected), found
    for problem, words in zip(found, expected, strict=True):
        assert words in problem


def test_github_anchors() -> None:
    markdown = (
        '# User guide\n## Refusing a handshake: `reject="close"` or `"http"`\n'
        "```\n# not a heading\n```\n## Set up\n### Set up\n## 1011 internal error\n"
    )
    assert github_anchors(markdown) == {
        "user-guide",
        "refusing-a-handshake-rejectclose-or-http",
        "set-up",
        "set-up-1",
        "1011-internal-error",
    }
