"""Run the test suites several times in a row; fail on any test whose result changes.

Usage (from the repository root)::

    python tests/support/flaky_check.py                      # both suites, 3 runs each
    python tests/support/flaky_check.py --suite e2e --runs 5
    python tests/support/flaky_check.py -- -k redis          # extra pytest arguments after --

Each run is a plain ``python -m pytest`` with ``--junitxml``; outcomes are
compared per test id (``file::name[params]``). The in-process suite is
``-m "not slow and not e2e"``, the e2e suite ``-m "e2e and not slow"``.
Exit status: 0 when every test gave the same result in every run and none
failed; 1 otherwise, listing the tests that changed (flaky) and those that
failed every time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

SUITES = {
    "in-process": "not slow and not e2e",
    "e2e": "e2e and not slow",
}


def outcomes(junit: Path) -> dict[str, str]:
    """``{test id: "passed" | "failed" | "skipped"}`` from one JUnit XML report.

    A test with a failure or error element (setup, call or teardown) failed.
    """
    results: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        test_id = f"{module}.py::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        if results.get(test_id) != "failed":  # an error in teardown outweighs the pass
            results[test_id] = outcome
    return results


def run_suite(name: str, runs: int, extra: list[str], workdir: Path) -> list[dict[str, str]]:
    """Run one suite *runs* times; one outcome map per run."""
    results = []
    for i in range(1, runs + 1):
        junit = workdir / f"{name}-{i}.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += ["-m", SUITES[name], f"--junitxml={junit}", *extra]
        started = time.monotonic()
        # pytest's own exit status is not the verdict here: the per-test comparison is.
        done = subprocess.run(command, check=False)
        took = time.monotonic() - started
        if not junit.exists():
            raise SystemExit(f"{name} run {i}: pytest wrote no report (exit {done.returncode})")
        results.append(outcomes(junit))
        counts: defaultdict[str, int] = defaultdict(int)
        for outcome in results[-1].values():
            counts[outcome] += 1
        summary = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
        print(f"== {name} run {i}/{runs}: {summary} in {took:.0f} s", flush=True)
    return results


def compare(results: list[dict[str, str]]) -> tuple[dict[str, list[str]], list[str]]:
    """(flaky: test id -> outcome per run, ids that failed in every run)."""
    ids = sorted(set().union(*results))
    flaky: dict[str, list[str]] = {}
    failed: list[str] = []
    for test_id in ids:
        seen = [run.get(test_id, "absent") for run in results]
        if len(set(seen)) > 1:
            flaky[test_id] = seen
        elif seen[0] == "failed":
            failed.append(test_id)
    return flaky, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per suite (default 3)")
    parser.add_argument("--suite", choices=[*SUITES, "all"], default="all")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error(f"--runs must be at least 2 to compare runs, not {args.runs}")
    names = list(SUITES) if args.suite == "all" else [args.suite]
    status = 0
    with tempfile.TemporaryDirectory(prefix="ws-guard-flaky-") as tmp:
        for name in names:
            flaky, failed = compare(run_suite(name, args.runs, args.pytest_args, Path(tmp)))
            for test_id, seen in flaky.items():
                print(f"FLAKY  {name}: {test_id}: {' / '.join(seen)}")
            for test_id in failed:
                print(f"FAILED {name}: {test_id}: failed in all {args.runs} runs")
            verdict = "stable" if not flaky and not failed else "NOT stable"
            print(f"== {name}: {verdict} ({len(flaky)} flaky, {len(failed)} always failing)")
            if flaky or failed:
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
