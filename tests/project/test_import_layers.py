"""The package's import graph: no cycles, and the layers import downwards only.

Read with ``ast`` from the sources, counting imports under ``TYPE_CHECKING``
and inside functions too: a type-only cycle still ties the modules together
for a reader and for mypy. ``import ws_guard`` is checked in a fresh
interpreter: PyJWT and cryptography load only with a JWT rule.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "ws_guard"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ws_guard modules *name* imports (``from a import b`` counts ``a.b`` when a module)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    # A package's own __init__ runs before any of its modules; that edge
    # (ws_guard.rules.x -> ws_guard.rules) is Python's, not a design choice.
    return {m for m in found if m in known and m != name and not name.startswith(m + ".")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_reader_sees_type_only_and_relative_imports() -> None:
    graph = _graph()
    assert "ws_guard.rules.runtime" in graph["ws_guard.rules.limits.keying"]  # TYPE_CHECKING
    assert "ws_guard.errors" in graph["ws_guard._core.storage"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(_graph()) == []


LOW_LAYERS = ("ws_guard.rules", "ws_guard.load")
ENGINE = ("ws_guard._core.guard", "ws_guard._core.middleware", "ws_guard._core.connection")


def test_rules_and_gauges_never_import_the_guard_or_middleware() -> None:
    graph = _graph()
    wrong = sorted(
        (module, target)
        for module, targets in graph.items()
        if module.startswith(LOW_LAYERS)
        for target in targets
        if target in ENGINE[:2]
    )
    assert wrong == []


def test_rules_and_gauges_never_import_the_connection() -> None:
    graph = _graph()
    wrong = sorted(
        (module, target)
        for module, targets in graph.items()
        if module.startswith(LOW_LAYERS)
        for target in targets
        if target in ENGINE
    )
    assert wrong == []


#: What the engine may import of ``rules/``: the base class, the two
#: protocols, the fast-path data shapes, and the key functions (client
#: address resolution). Never a concrete rule's module.
CORE_MAY_IMPORT = {
    "ws_guard.rules.base",
    "ws_guard.rules.context",
    "ws_guard.rules.runtime",
    "ws_guard.rules.fast",
    "ws_guard.rules.keys",
}


def test_the_core_imports_no_concrete_rule() -> None:
    graph = _graph()
    core = [module for module in graph if module.startswith("ws_guard._core")]
    assert "ws_guard._core.fast_path" in core
    assert "ws_guard._core.connection" in core
    wrong = sorted(
        (module, target)
        for module in core
        for target in graph[module]
        if target.startswith("ws_guard.rules") and target not in CORE_MAY_IMPORT
    )
    assert wrong == []


def _fresh_import(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_import_ws_guard_loads_neither_pyjwt_nor_cryptography() -> None:
    out = _fresh_import(
        "import ws_guard, sys; print('jwt' in sys.modules, 'cryptography' in sys.modules)"
    )
    assert out == "False False"


def test_a_jwt_rule_loads_on_first_use() -> None:
    out = _fresh_import(
        "import sys, ws_guard; from ws_guard import rules; "
        "a = rules.JWTAuth; b = rules.JWKS; "
        "print(a.__module__, b.__module__, 'jwt' in sys.modules, 'JWTAuth' in dir(rules))"
    )
    assert out == "ws_guard.rules.auth.jwt ws_guard.rules.auth.jwks True True"


def test_an_unknown_rules_attribute_is_an_attribute_error() -> None:
    from ws_guard import rules

    with pytest.raises(AttributeError, match=r"'ws_guard\.rules' has no attribute 'JWTAuthh'"):
        rules.JWTAuthh  # noqa: B018 - the lookup is what raises
