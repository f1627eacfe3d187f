"""The README's "Tested with" tables name exactly the servers and frameworks the tests run.

Rows are read from the README's section (the first cell of each row, an id in
backticks) and compared with the ids the tests are parametrized by:

- frameworks: ``FRAMEWORKS`` of tests/e2e/test_frameworks.py, and each row's
  example link names that framework's file in its ``EXAMPLES``;
- servers: the servers tests/e2e/test_transparency.py runs every case on
  (uvicorn's three WebSocket stacks, hypercorn on asyncio and on trio) and
  ``SERVERS`` of tests/e2e/test_server_matrix.py, the matrix of every
  server's close-code tests (granian and daphne besides two of those).

A server or framework added to the tests without a row, or a row left behind
by one removed, fails here with the ids that differ.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable
from typing import Any

import pytest

from tests.support.paths import ROOT, TESTS

README = ROOT / "README.md"
SECTION = "## Tested with"
SERVER_MATRIX = TESTS / "e2e" / "test_server_matrix.py"
_ID_CELL = re.compile(r"^`([^`]+)`$")
_LINK = re.compile(r"\[[^\]]*\]\[([^\]]+)\]")
_DEFINITION = re.compile(r"^\[([^\]]+)\]:\s*(\S+)", re.M)


def tables() -> dict[str, list[list[str]]]:
    """The section's tables by their first header cell: rows of cells, header and rule dropped."""
    text = README.read_text(encoding="utf-8")
    start = text.find(f"\n{SECTION}\n")
    if start < 0:
        pytest.fail(f"README.md has no section {SECTION!r}")
    body = text[start + len(SECTION) + 2 :]
    body = body[: body.find("\n## ")] if "\n## " in body else body
    found: dict[str, list[list[str]]] = {}
    rows: list[list[str]] = []
    for line in [*body.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if rows:
            found[rows[0][0]] = rows[2:]
            rows = []
    return found


def row_ids(rows: Iterable[list[str]]) -> list[str]:
    ids = []
    for row in rows:
        match = _ID_CELL.match(row[0])
        if match is None:
            pytest.fail(f"README.md matrix row {row!r}: the first cell must be an id in backticks")
        ids.append(match.group(1))
    return ids


def param_ids(values: Any) -> list[str]:
    """Ids of a parametrization: strings, ``pytest.param(...)`` (its id or first value), keys."""
    ids = []
    for value in values:
        if isinstance(value, str):
            ids.append(value)
        elif getattr(value, "id", None) is not None:
            ids.append(str(value.id))
        elif hasattr(value, "values") and not isinstance(value, dict):
            ids.append(str(value.values[0]))
        elif isinstance(value, tuple):
            ids.append(str(value[0]))
        else:
            pytest.fail(f"cannot read a server id from {value!r}")
    return ids


def servers_under_test() -> list[str]:
    """Every server id a test runs: the transparency suite's and the close-code matrix's."""
    ids = param_ids(importlib.import_module("tests.e2e.test_transparency").SERVERS)
    if SERVER_MATRIX.exists():
        matrix = importlib.import_module("tests.e2e.test_server_matrix")
        ids += [server for server in param_ids(matrix.SERVERS) if server not in ids]
    return ids


def test_the_server_rows_are_the_tested_servers() -> None:
    readme, tested = row_ids(tables()["Server"]), servers_under_test()
    assert len(readme) == len(set(readme)), f"a server row is repeated: {readme}"
    assert sorted(readme) == sorted(tested), (
        f"README.md rows without a test: {sorted(set(readme) - set(tested))}; "
        f"tested servers without a row: {sorted(set(tested) - set(readme))}"
    )


def test_the_framework_rows_are_the_tested_frameworks_in_order() -> None:
    from tests.e2e.test_frameworks import FRAMEWORKS

    assert row_ids(tables()["Framework"]) == FRAMEWORKS


def test_each_framework_row_links_the_example_its_test_serves() -> None:
    from tests.e2e.test_frameworks import EXAMPLES

    text = README.read_text(encoding="utf-8")
    targets = dict(_DEFINITION.findall(text))
    linked = {}
    for row in tables()["Framework"]:
        label = _LINK.search(row[1])
        assert label is not None, f"no example link in {row!r}"
        linked[row_ids([row])[0]] = targets[label.group(1)].rsplit("/blob/main/", 1)[-1]
    assert linked == EXAMPLES


def test_param_ids_reads_each_shape_a_server_list_may_take() -> None:
    shapes = ["a", pytest.param("b", id="b-id"), pytest.param("c"), ("d", ["--flag"])]
    assert param_ids(shapes) == ["a", "b-id", "c", "d"]
    assert param_ids({"e": [], "f": []}) == ["e", "f"]
