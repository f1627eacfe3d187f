"""examples/static/reconnect.js under node: the shared policy table, quickly.

The same table runs in headless Chromium in test_client_browser.py; node
gives a fast answer without a browser.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.reconnect_cases import (
    CASES_PATH,
    as_dict,
    as_twin,
    check_js_results,
    matches,
    policy,
    twin_table,
)
from tests.support.services import require_binary
from ws_guard._core.twins import TWINNED_CODES, rfc_code

ROOT = Path(__file__).resolve().parents[3]
MODULE = ROOT / "examples" / "static" / "reconnect.js"
RUNNER = ROOT / "tests" / "js" / "policy_cases.mjs"


def run_node(body: str) -> object:
    """Run *body* as an ES module in node with ``lib`` and the case runner imported."""
    node = require_binary("node", apt_package="nodejs")
    script = (
        f"import * as lib from {json.dumps(MODULE.as_uri())};"
        f"import {{ runCases, backoffBounds }} from {json.dumps(RUNNER.as_uri())};"
        "import { readFileSync } from 'node:fs';"
        f"const table = JSON.parse(readFileSync({json.dumps(str(CASES_PATH))}, 'utf8'));"
        f"{body}"
    )
    out = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def test_reconnect_js_policy_table_in_node() -> None:
    results = run_node("console.log(JSON.stringify(runCases(lib, table)));")
    assert isinstance(results, dict)
    check_js_results(results)


def test_reconnect_js_backoff_bounds_over_many_math_random_draws() -> None:
    """10,000 Math.random draws per attempt 1..12, with and without a hint."""
    outside = run_node("console.log(JSON.stringify(backoffBounds(lib, 10000)));")
    assert outside == []


def test_reconnect_js_twins_are_the_servers_twins() -> None:
    """reconnect.js maps back exactly the codes ws_guard twins, and only those."""
    codes = list(range(3990, 5010)) + list(range(990, 1020))
    got = run_node(
        f"console.log(JSON.stringify({{twinned: lib.TWINNED_CODES, "
        f"mapped: {json.dumps(codes)}.map(lib.rfcCode)}}));"
    )
    assert got == {"twinned": sorted(TWINNED_CODES), "mapped": [rfc_code(c) for c in codes]}


def test_reconnect_js_decides_every_twin_as_its_rfc_code() -> None:
    """The shared table with each twinned code sent as its twin: the RFC case's answers."""
    table = twin_table()
    results = run_node(f"console.log(JSON.stringify(runCases(lib, {json.dumps(table)})));")
    assert isinstance(results, dict)
    assert len(results["cases"]) == len(table["cases"])
    for case, got in zip(table["cases"], results["cases"], strict=True):
        rfc = as_dict(
            policy(case.get("policy"), case["random"]).decide(
                case["rfc"], case["reason"], case["attempt"], case["refreshes"]
            )
        )
        assert matches(got, as_twin(rfc, case["rfc"])), (case["name"], got, rfc)
    for session, got in zip(table["sessions"], results["sessions"], strict=True):
        expected = [step["expect"] for step in session["steps"] if step["op"] == "closed"]
        assert len(got) == len(expected), session["name"]
        for step_got, step_expect in zip(got, expected, strict=True):
            assert matches(step_got, step_expect), (session["name"], step_got, step_expect)
