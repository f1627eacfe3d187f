"""The pages under docs/ work on GitHub and on the documentation site alike.

``mkdocs build --strict`` (a step of ``.ci/run``) refuses a page missing from
the navigation, a link out of ``docs/`` and a link to a heading that does not
exist. These tests check the same rules in a second, without MkDocs, and the
one MkDocs cannot see: a link must also work on GitHub, so

- a relative link stays inside ``docs/`` and names a file there, and a heading
  of it that GitHub and the site both give (a repeated heading's ``-1``
  suffix is GitHub's only: MkDocs' toc writes ``_1``);
- a link to a file outside ``docs/`` is absolute, at the repository's
  ``blob/main`` or ``tree/main`` (the README's rule, test_docs_links.py), and
  names a file or folder that exists;
- every page is in ``mkdocs.yml``'s navigation, every entry there is a page,
  and every ``::: module`` of docs/api.md names a module under src/;
- every Sphinx role the docstrings use (``:class:`Guard```) is one that
  docs/griffe_roles.py turns into a code span on the API page.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.project.test_docs_links import BLOB, REPOSITORY, TREE, github_anchors, links, prose

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"
#: A nav entry: ``- Title: page.md`` or ``- page.md``, at any depth.
_NAV_PAGE = re.compile(r"^\s*-\s+(?:[^:\n]+:\s+)?([\w./-]+\.md)\s*$", re.M)
_API_ENTRY = re.compile(r"^:::\s+(\S+)\s*$", re.M)


def site_anchors(markdown: str) -> set[str]:
    """The heading anchors of *markdown* that GitHub and MkDocs both give.

    Both slug a heading the same way (mkdocs.yml configures ``pymdownx.slugs``,
    GitHub's rules), but number a repeated heading differently, so only each
    heading's first slug is shared.
    """
    original = markdown.splitlines()
    shared: set[str] = set()
    for number, line in enumerate(prose(markdown).splitlines()):
        if re.match(r"^#{1,6}[ \t]", line):  # a heading outside code blocks
            # Alone, the heading gets its first slug; its code spans are kept for it.
            shared |= github_anchors(original[number].strip() + "\n")
    return shared


def page_problems(page: Path, docs: Path, root: Path) -> list[str]:
    """Every link of *page* (a file under *docs*) that breaks on GitHub or on the site.

    Without a ``docs/img`` folder (an unpacked sdist leaves the figures out,
    pyproject's sdist ``include``), links to the figures in it are not checked.
    """
    figures = (docs / "img").is_dir()
    out: list[str] = []
    text = page.read_text(encoding="utf-8")
    for link in links(text)[0]:
        where = f"{page.relative_to(root)}:{link.line}: {link.url!r}"
        url = link.url
        if re.match(r"^[a-z][a-z0-9+.-]*:", url, re.I):
            out += _absolute_problem(url, where, root)
            continue
        target, _, anchor = url.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.is_relative_to(docs.resolve()):
            out.append(f"{where}: outside docs/; the site has no such file, use {BLOB}<path>")
        elif not figures and path.parent == (docs / "img").resolve():
            continue
        elif not path.is_file():
            out.append(f"{where}: no file {target!r} in docs/")
        elif (
            anchor
            and path.suffix == ".md"
            and anchor not in site_anchors(path.read_text(encoding="utf-8"))
        ):
            out.append(f"{where}: no heading for #{anchor} on GitHub and the site")
    return out


def _absolute_problem(url: str, where: str, root: Path) -> list[str]:
    if not url.startswith((BLOB, TREE)):
        return []  # another site, or the repository's issues: not ours to check here
    folder = url.startswith(TREE)
    path = url.removeprefix(TREE if folder else BLOB).partition("#")[0]
    target = root / path
    if not path or not (target.is_dir() if folder else target.is_file()):
        return [f"{where}: no {'folder' if folder else 'file'} {path!r} in the repository"]
    return []


def nav_pages(config: str) -> list[str]:
    """The pages mkdocs.yml's ``nav:`` lists, in order (paths under docs/)."""
    nav = re.search(r"^nav:\n(.*?)(?=^\S|\Z)", config, re.M | re.S)
    return _NAV_PAGE.findall(nav[1]) if nav else []


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_page_links_work_on_github_and_on_the_site(page: Path) -> None:
    found = page_problems(page, DOCS, ROOT)
    assert not found, "\n".join(found)


def test_every_page_is_in_the_navigation_and_every_entry_is_a_page() -> None:
    listed = nav_pages(MKDOCS.read_text(encoding="utf-8"))
    assert len(listed) == len(set(listed)), f"listed twice: {listed}"
    on_disk = {p.name for p in pages()}
    assert sorted(on_disk - set(listed)) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(set(listed) - on_disk) == [], "nav entries with no page"
    assert listed[0] == "index.md"


def test_the_site_uses_githubs_heading_anchors() -> None:
    config = MKDOCS.read_text(encoding="utf-8")
    assert "slugify: !!python/object/apply:pymdownx.slugs.slugify" in config
    assert re.search(r"kwds:\s*\n\s*case: lower", config)
    for setting in ("omitted_files", "absolute_links", "unrecognized_links", "anchors"):
        assert re.search(rf"^  {setting}: warn$", config, re.M), setting


def test_every_api_entry_names_a_module() -> None:
    entries = _API_ENTRY.findall((DOCS / "api.md").read_text(encoding="utf-8"))
    assert "ws_guard" in entries
    missing = []
    for name in entries:
        base = ROOT / "src" / Path(*name.split("."))
        if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()):
            missing.append(name)
    assert not missing, f"docs/api.md names no module: {missing}"


# -- the checks themselves ---------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A repository with docs/a.md, docs/b.md, docs/img/x.png and examples/app.py."""
    docs = tmp_path / "docs"
    (docs / "img").mkdir(parents=True)
    (docs / "b.md").write_text("# B\n## Set up\n## Set up\n## `x.y(z=1)`\n", encoding="utf-8")
    (docs / "img" / "x.png").write_bytes(b"\x89PNG")
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "app.py").write_text("", encoding="utf-8")
    return tmp_path, docs


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("[b](b.md) [s](b.md#set-up) ![x](img/x.png) [c](b.md#xyz1)\n", []),
        ("# A\n[top](#a) [web](https://example.com/) <http://127.0.0.1:8000/>\n", []),
        (f"[app]({BLOB}examples/app.py) [ex]({TREE}examples) [i]({REPOSITORY}/issues)\n", []),
        ("[readme](../README.md)\n", ["outside docs/"]),
        ("[app](../examples/app.py)\n", ["outside docs/"]),
        ("[c](c.md)\n", ["no file"]),
        ("![y](img/y.png)\n", ["no file"]),
        ("[s](b.md#nowhere)\n", ["no heading"]),
        ("[s](b.md#set-up-1)\n", ["no heading"]),  # GitHub's numbering only
        ("# A\n[here](#b)\n", ["no heading"]),
        (f"[app]({BLOB}examples/nope.py)\n", ["no file"]),
        (f"[ex]({TREE}nowhere)\n", ["no folder"]),
        ("`[x](../README.md)` and\n```md\n[y](../z.md)\n```\n", []),
    ],
)
def test_page_check_catches(tree: tuple[Path, Path], markdown: str, expected: list[str]) -> None:
    root, docs = tree
    page = docs / "a.md"
    page.write_text(markdown, encoding="utf-8")
    found = page_problems(page, docs, root)
    assert len(found) == len(expected), found
    for problem, words in zip(found, expected, strict=True):
        assert words in problem


def test_page_check_skips_figures_only_where_docs_has_no_img(tree: tuple[Path, Path]) -> None:
    root, docs = tree
    page = docs / "a.md"
    page.write_text("![y](img/y.png) [c](c.md)\n", encoding="utf-8")
    assert len(page_problems(page, docs, root)) == 2
    (docs / "img" / "x.png").unlink()
    (docs / "img").rmdir()
    (left,) = page_problems(page, docs, root)
    assert left.endswith("'c.md': no file 'c.md' in docs/")


def test_nav_pages_reads_nested_entries_and_stops_at_the_next_key() -> None:
    config = (
        "site_name: x\nnav:\n  - Home: index.md\n  - Using:\n      - User guide: guide.md\n"
        "      - api.md\n  - Far: https://example.com/\nplugins:\n  - page.md\n"
    )
    assert nav_pages(config) == ["index.md", "guide.md", "api.md"]


def test_sphinx_roles_become_code_spans_on_the_site() -> None:
    """docs/griffe_roles.py rewrites every role the docstrings under src/ use."""
    pytest.importorskip("griffe", reason="the docs extra is not installed")
    spec = importlib.util.spec_from_file_location("griffe_roles", DOCS / "griffe_roles.py")
    assert spec is not None
    assert spec.loader is not None
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    assert roles.plain(":class:`Guard` and :meth:`~ws_guard.Guard.drain`, :py:func:`f`") == (
        "`Guard` and `drain`, `f`"
    )
    assert roles.plain("a :term:`x` and `:class:` alone") == "a :term:`x` and `:class:` alone"
    left = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        rewritten = roles.plain(path.read_text(encoding="utf-8"))
        left += [f"{path.name}: {m[0]}" for m in re.finditer(r":[a-z:]+:`[^`]+`", rewritten)]
    assert not left, f"roles the site would print as they are: {left}"
