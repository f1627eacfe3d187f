"""docs/reference.md names every public name, and its links lead somewhere.

A name is public when it is in a module's ``__all__`` (``ws_guard.codes``,
``errors`` and ``types``: every module-level name without a leading ``_``,
the ``REASON_*`` slugs being covered by tests/test_codes.py). Each must
appear in the page as code (between backticks, alone or in a signature).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from tests.project.test_docs_links import github_anchors, links

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference.md"
TEXT = REFERENCE.read_text(encoding="utf-8")
#: Every identifier inside a code span of the page.
CODE_WORDS = {
    word for span in re.findall(r"`([^`]+)`", TEXT) for word in re.findall(r"[A-Za-z_]\w*", span)
}

WITH_ALL = [
    "ws_guard",
    "ws_guard.rules",
    "ws_guard.load",
    "ws_guard.client",
    "ws_guard.metrics.prometheus",
    "ws_guard.metrics.otel",
]
WITHOUT_ALL = ["ws_guard.codes", "ws_guard.errors", "ws_guard.types"]
#: The protocols rules see; listed once the modules that define them exist.
PROTOCOLS = [("ws_guard.rules.context", "RuleContext"), ("ws_guard.rules.runtime", "Runtime")]


def public(module: ModuleType) -> set[str]:
    """``__all__``, else the names the module itself defines at top level."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return set(names)
    tree = ast.parse(Path(str(module.__file__)).read_text(encoding="utf-8"))
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(t.id for t in targets if isinstance(t, ast.Name))
    return {name for name in defined if not name.startswith(("_", "REASON_"))}


@pytest.mark.parametrize("name", WITH_ALL + WITHOUT_ALL)
def test_every_public_name_is_in_the_reference(name: str) -> None:
    module = importlib.import_module(name)
    missing = sorted(public(module) - CODE_WORDS)
    assert not missing, f"{name}: not in docs/reference.md: {missing}"
    assert f"`{name}`" in TEXT or name.startswith("ws_guard.metrics.")


@pytest.mark.parametrize(("module", "name"), PROTOCOLS)
def test_the_rule_protocols_are_described(module: str, name: str) -> None:
    assert f"`{name}` (`{module}`)" in TEXT
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} does not exist yet")
    protocol = getattr(importlib.import_module(module), name)
    members = {m for m in vars(protocol) if not m.startswith("_")}
    section = TEXT.split(f"`{name}` (`{module}`)", 1)[1].split("\n- ", 1)[0]
    listed = {w for span in re.findall(r"`([^`]+)`", section) for w in re.findall(r"\w+", span)}
    assert members, name
    assert not members - listed, f"{name} members not listed: {sorted(members - listed)}"


def test_the_reference_links_lead_to_a_page_and_heading() -> None:
    problems = []
    for link in links(TEXT)[0]:
        target, _, anchor = link.url.partition("#")
        if link.url.startswith(("http://", "https://")):
            continue
        path = REFERENCE if not target else REFERENCE.parent / target
        if not path.is_file():
            problems.append(f"line {link.line}: {link.url}: no file")
        elif anchor and anchor not in github_anchors(path.read_text(encoding="utf-8")):
            problems.append(f"line {link.line}: {link.url}: no heading")
    assert not problems, "\n".join(problems)
