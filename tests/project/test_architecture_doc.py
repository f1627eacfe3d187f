"""docs/architecture.md names real code, so the page cannot drift from it.

Every code span of the page that names code is resolved against the package:

- ``module:qualname`` (``_core.admission:Admission.handshake``; the module is
  relative to ``ws_guard``, or starts with ``ws_guard.``): the module imports,
  each name of *qualname* is an attribute, and a class or function is
  defined where the page says (a method in the class named, not inherited
  from a layer below; a function in the module named, not imported into it);
- ``Class.name`` (``Connection.receive``): *Class* is a class ws_guard
  defines, and *name* is defined in that class itself;
- ``ws_guard.a.b.Name``: the longest importable prefix, then attributes;
- a file (``_core/fast_path.py``, ``tests/unit/core/test_fast_path.py``):
  it exists in the repository, at the top or in a folder of the package.

The page's relative links lead to a page and a heading, and the pages that
list the documentation link to it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from tests.project.test_docs_links import github_anchors, links

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "ws_guard"
PAGE = ROOT / "docs" / "architecture.md"
TEXT = PAGE.read_text(encoding="utf-8")

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
_QUALIFIED = re.compile(r"^((?:ws_guard\.)?[a-z_]\w*(?:\.[a-z_]\w*)*):([A-Za-z_]\w*(?:\.\w+)*)$")
_CLASS_ATTR = re.compile(r"^([A-Z]\w*)\.([A-Za-z_]\w*)$")
_DOTTED = re.compile(r"^ws_guard(?:\.\w+)+$")
_FILE = re.compile(r"^[\w./-]+\.py$")


def code_spans(markdown: str) -> list[str]:
    """The text of every inline code span outside fenced blocks, in order."""
    return [m[2].strip() for m in _SPAN.finditer(_FENCE.sub("", markdown))]


def _defined_classes() -> dict[str, list[str]]:
    """Class name -> the ws_guard modules that define it at top level (read with ``ast``)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        module = ".".join(parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                found.setdefault(node.name, []).append(module)
    return found


CLASSES = _defined_classes()
#: Folders a file named on the page may sit in: the repository, the package and its subpackages.
FILE_BASES = [ROOT, PACKAGE, *sorted(p.parent for p in PACKAGE.rglob("__init__.py"))]


def _misplaced(owner: Any, name: str, value: Any, where: str) -> str | None:
    """Why *value* (``owner.name``) is not defined where the page says, or None."""
    if inspect.isclass(owner):
        if name not in vars(owner):
            return f"{where}: {name!r} is inherited, not defined in {owner.__qualname__}"
        return None
    target = value.fget if isinstance(value, property) else value
    module = getattr(target, "__module__", None)
    if (inspect.isclass(target) or inspect.isfunction(target)) and module != owner.__name__:
        return f"{where}: defined in {module}, not in {owner.__name__}"
    return None


def _walk(owner: Any, names: list[str], where: str) -> str | None:
    """Resolve *names* as attributes from *owner*; why not, or None."""
    for name in names:
        if not hasattr(owner, name):
            return f"{where}: {getattr(owner, '__name__', owner)!r} has no {name!r}"
        value = inspect.getattr_static(owner, name)
        problem = _misplaced(owner, name, value, where)
        if problem is not None:
            return problem
        owner = getattr(owner, name)
    return None


def problem_with(reference: str) -> str | None:
    """Why the code span *reference* names nothing in ws_guard; None when it resolves."""
    qualified = _QUALIFIED.match(reference)
    if qualified is not None:
        module_name = qualified[1]
        if not module_name.startswith("ws_guard."):
            module_name = f"ws_guard.{module_name}"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            return f"{reference}: {exc}"
        return _walk(module, qualified[2].split("."), reference)
    attribute = _CLASS_ATTR.match(reference)
    if attribute is not None:
        modules = CLASSES.get(attribute[1])
        if not modules:
            return f"{reference}: ws_guard defines no class {attribute[1]!r}"
        problems = []
        for module_name in modules:
            owner = getattr(importlib.import_module(module_name), attribute[1])
            problem = _walk(owner, [attribute[2]], reference)
            if problem is None:
                return None
            problems.append(problem)
        return "; ".join(problems)
    if _DOTTED.match(reference):
        parts = reference.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                module = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            return _walk(module, parts[cut:], reference)
        return f"{reference}: no module"
    if _FILE.match(reference):
        if any((base / reference).is_file() for base in FILE_BASES):
            return None
        return f"{reference}: no such file in the repository or the package"
    return None  # prose in backticks: a value, a keyword, an expression


def test_every_code_reference_on_the_page_resolves() -> None:
    spans = code_spans(TEXT)
    checked = [s for s in spans if _QUALIFIED.match(s) or _CLASS_ATTR.match(s) or _DOTTED.match(s)]
    # The page walks the code function by function: an empty list means the
    # reader found nothing, not that every reference is right.
    assert len(checked) >= 60, checked
    problems = [p for p in map(problem_with, spans) if p is not None]
    assert not problems, "docs/architecture.md:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("_core.admission:Admission.handshake", None),
        ("ws_guard._core.connection:Connection.receive", None),
        ("_core.closing:CLOSE_FRAME_GRACE", None),
        ("_json:read_json", None),
        ("Connection.receive", None),
        ("Closing._close_open", None),
        ("RunState.rest", None),
        ("ws_guard.testing.ScriptedWebSocket", None),
        ("_core/fast_path.py", None),
        ("tests/unit/core/test_fast_path.py", None),
        ("guard.metrics.snapshot()", None),
        ("_core.connection:Connection.handshake", "inherited"),
        ("Connection.handshake", "inherited"),
        ("_core.admission:Admission.no_such_step", "has no"),
        ("_core.nowhere:Guard", "No module named"),
        ("rules.base:Close", "defined in ws_guard._core.decisions"),
        ("Nowhere.receive", "defines no class"),
        ("Connection.no_such_step", "has no"),
        ("ws_guard._core.connection.Nope", "has no"),
        ("_core/nowhere.py", "no such file"),
    ],
)
def test_the_reference_check_catches(reference: str, expected: str | None) -> None:
    problem = problem_with(reference)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None
        assert expected in problem, problem


def test_code_spans_skip_fenced_blocks() -> None:
    markdown = "a `x:y` b\n```text\n`Connection.nope`\n```\nc ``Rule.bind``\n"
    assert code_spans(markdown) == ["x:y", "Rule.bind"]


def test_the_page_links_lead_to_a_page_and_heading() -> None:
    problems = []
    for link in links(TEXT)[0]:
        target, _, anchor = link.url.partition("#")
        if link.url.startswith(("http://", "https://")):
            continue
        path = PAGE if not target else PAGE.parent / target
        if not path.is_file():
            problems.append(f"line {link.line}: {link.url}: no file")
        elif anchor and anchor not in github_anchors(path.read_text(encoding="utf-8")):
            problems.append(f"line {link.line}: {link.url}: no heading")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("page", "target"),
    [
        ("README.md", "https://github.com/ws-guard/ws-guard/blob/main/docs/architecture.md"),
        ("docs/index.md", "architecture.md"),
        ("docs/contributing.md", "architecture.md"),
    ],
)
def test_the_documentation_lists_link_to_the_page(page: str, target: str) -> None:
    urls = {link.url.partition("#")[0] for link in links((ROOT / page).read_text("utf-8"))[0]}
    assert target in urls
