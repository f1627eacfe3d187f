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

The "What is tested" cells are checked too. A server row's cell is a list of
the claims in :data:`CLAIMS`; the claims the tests make true for that server
are read from ``pytest --collect-only`` (a claim holds on a server when one of
its tests runs there), and the cell must list exactly those, in any order.
A trailing ``, with ...`` note says how the server's wire differs
(``WIRE`` of the close-code matrix) and must name each difference. A
framework row's cell must name the echo and the codes the rule-breach test asserts and
say ``the example`` exactly when the example test serves that framework's
example. And pyproject's ``test`` extra installs every server and framework
a row names, so none has to be mocked or skipped.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
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


#: Each claim a server row may make: the test files (relative to tests/e2e/)
#: whose tests make it true, with a keyword a test's name must hold in that
#: file ("" for every test). tests/e2e/test_trio.py runs ``hypercorn -k trio``
#: only; its tests carry no server id.
CLAIMS: dict[str, list[tuple[str, str]]] = {
    "every close code": [("test_close_codes.py", "")],
    "rates": [("test_rate.py", ""), ("test_trio.py", "rate")],
    "JWT": [("test_jwt.py", ""), ("test_trio.py", "token")],
    "first-message tokens": [("test_first_message.py", ""), ("test_trio.py", "first_message")],
    "load shedding and drain": [
        ("test_load.py", ""),
        ("test_trio.py", "1013"),
        ("test_trio.py", "drain"),
    ],
    "hostile input": [("test_hostile.py", "")],
    "transparency": [("test_transparency.py", "")],
    "the close-code matrix": [("test_server_matrix.py", "")],
}
#: A file whose tests run one server and name none in their ids.
SINGLE_SERVER = {"test_trio.py": "hypercorn-trio"}
#: Server ids as the tests spell them (uvicorn's stacks alone, hypercorn alone
#: for its asyncio worker), longest first, and the README's row id of each.
_SPELLINGS = {
    "uvicorn-websockets-sansio": "uvicorn-websockets-sansio",
    "uvicorn-websockets": "uvicorn-websockets",
    "uvicorn-wsproto": "uvicorn-wsproto",
    "hypercorn-asyncio": "hypercorn-asyncio",
    "hypercorn-trio": "hypercorn-trio",
    "websockets-sansio": "uvicorn-websockets-sansio",
    "websockets": "uvicorn-websockets",
    "wsproto": "uvicorn-wsproto",
    "hypercorn": "hypercorn-asyncio",
    "granian": "granian",
    "daphne": "daphne",
}
_NODE = re.compile(r"^tests/e2e/(\w+\.py)::(\w+)(?:\[(.*)\])?$")


def servers_in_id(params: str) -> set[str]:
    """The README server ids a test id's parameters name (``wsproto-1009`` → uvicorn-wsproto)."""
    parts = params.split("-")
    found: set[str] = set()
    i = 0
    while i < len(parts):
        for spelling, server in _SPELLINGS.items():  # longest first
            n = spelling.count("-") + 1
            if "-".join(parts[i : i + n]) == spelling:
                found.add(server)
                i += n
                break
        else:
            i += 1
    return found


@cache
def collected() -> list[tuple[str, str, str]]:
    """(file, test name, parameter id) of every test of the claimed files, from pytest itself."""
    files = sorted({file for specs in CLAIMS.values() for file, _ in specs})
    env = {
        key: value
        for key, value in os.environ.items()
        # A coverage run's options and data file are the outer pytest's, not this one's.
        if key != "PYTEST_ADDOPTS" and not key.startswith(("COV_CORE_", "COVERAGE_"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        + [f"tests/e2e/{file}" for file in files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    nodes = [m.groups("") for m in map(_NODE.match, out.stdout.splitlines()) if m]
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert nodes, out.stdout[-2000:]
    return [(str(file), str(name), str(params)) for file, name, params in nodes]


def claims_by_server() -> dict[str, set[str]]:
    """Each server id and the claims of :data:`CLAIMS` its tests make true."""
    found: dict[str, set[str]] = {}
    for file, name, params in collected():
        servers = servers_in_id(params) or {SINGLE_SERVER.get(file, "")} - {""}
        for claim, specs in CLAIMS.items():
            if any(file == f and keyword in name for f, keyword in specs):
                for server in servers:
                    found.setdefault(server, set()).add(claim)
    return found


def split_cell(cell: str) -> tuple[set[str], str]:
    """A server cell's claims and its ``with ...`` note ("" without one)."""
    claims, _, note = cell.partition(", with ")
    return {claim.strip() for claim in claims.split(",")}, note


def test_each_server_cell_lists_exactly_the_claims_its_tests_make() -> None:
    tested = claims_by_server()
    wrong = {}
    for row in tables()["Server"]:
        server = row_ids([row])[0]
        listed, _ = split_cell(row[2])
        if listed != tested.get(server, set()):
            wrong[server] = {
                "listed, no test": sorted(listed - tested.get(server, set())),
                "tested, not listed": sorted(tested.get(server, set()) - listed),
            }
    assert wrong == {}


def test_a_server_cell_notes_exactly_how_its_wire_differs() -> None:
    wire = importlib.import_module("tests.e2e.test_server_matrix").WIRE
    for row in tables()["Server"]:
        server = row_ids([row])[0]
        _, note = split_cell(row[2])
        differs = wire.get(server)
        if differs is None:
            assert note == "", f"{server}: a note, but its wire is as sent: {note!r}"
            continue
        assert ("private-range twins" in note) == differs.twins, (server, note)
        assert ("no reasons" in note) == (not differs.reasons), (server, note)


def test_each_framework_cell_names_what_its_tests_check() -> None:
    frameworks = importlib.import_module("tests.e2e.test_frameworks")
    breach = frameworks.test_a_rule_breach_closes_with_its_code_and_reason
    (cases,) = [m.args[1] for m in breach.pytestmark if m.name == "parametrize"]
    codes = [str(case.values[1]) for case in cases]
    example = frameworks.test_the_example_echoes_closes_1009_and_refuses_members
    (served,) = [m.args[1] for m in example.pytestmark if m.name == "parametrize"]
    for row in tables()["Framework"]:
        framework, cell = row_ids([row])[0], row[2]
        assert ", ".join(["echo", *codes]) + ", " in cell, (framework, cell)
        assert "pass through" in cell, (framework, cell)
        # examples/app.py (Starlette) has tests of its own, in a browser too: test_example_app.py.
        has_example_test = framework in served or framework == "starlette"
        assert ("the example" in cell) == has_example_test, (framework, cell)


def test_servers_in_id_reads_each_spelling() -> None:
    assert servers_in_id("wsproto-1009") == {"uvicorn-wsproto"}
    assert servers_in_id("websockets-sansio") == {"uvicorn-websockets-sansio"}
    assert servers_in_id("websockets-too-big") == {"uvicorn-websockets"}
    assert servers_in_id("SIGTERM-hypercorn-trio") == {"hypercorn-trio"}
    assert servers_in_id("hypercorn") == {"hypercorn-asyncio"}
    assert servers_in_id("daphne-1008") == {"daphne"}
    assert servers_in_id("query") == set()


#: The distributions each README row needs, all from the package index.
SERVER_DISTRIBUTIONS = {
    "uvicorn-websockets-sansio": {"uvicorn", "websockets"},
    "uvicorn-websockets": {"uvicorn", "websockets"},
    "uvicorn-wsproto": {"uvicorn", "wsproto"},
    "hypercorn-asyncio": {"hypercorn"},
    "hypercorn-trio": {"hypercorn", "trio"},
    "granian": {"granian"},
    "daphne": {"daphne"},
}
FRAMEWORK_DISTRIBUTIONS = {
    "starlette": {"starlette"},
    "fastapi": {"fastapi"},
    "litestar": {"litestar"},
    "channels": {"channels", "django"},
    "quart": {"quart"},
    "raw": set(),
}
_EXTRA = re.compile(r"^([\w-]+) = \[(.*?)\]$", re.M | re.S)
_REQUIREMENT = re.compile(r'"([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?[^"]*"')


def extra_distributions(extra: str) -> set[str]:
    """Every distribution pyproject's *extra* installs, its ``ws-guard[...]`` extras included.

    Read with a regular expression: tomllib is not in Python 3.10, which the
    package supports.
    """
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text[text.index("[project.optional-dependencies]") :]
    extras = {name: body for name, body in _EXTRA.findall(section)}
    found: set[str] = set()
    todo, seen = [extra], set()
    while todo:
        name = todo.pop()
        seen.add(name)
        for dist, wanted in _REQUIREMENT.findall(extras[name]):
            dist = dist.lower()
            if dist == "ws-guard":
                todo += [e.strip() for e in wanted.split(",") if e.strip() not in seen]
            else:
                found.add(dist)
    return found


def test_the_test_extra_installs_every_server_and_framework_of_the_matrix() -> None:
    assert sorted(SERVER_DISTRIBUTIONS) == sorted(row_ids(tables()["Server"]))
    assert list(FRAMEWORK_DISTRIBUTIONS) == row_ids(tables()["Framework"])
    needed = set().union(*SERVER_DISTRIBUTIONS.values(), *FRAMEWORK_DISTRIBUTIONS.values())
    assert needed - extra_distributions("test") == set()
