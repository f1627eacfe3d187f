"""The benchmark scripts still run: argument parsing, a tiny in-process run, a tiny echo run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_per_message_tiny_run_prints_a_table() -> None:
    done = run("per_message.py", "--messages", "50", "--repeats", "2", "--handshakes", "2")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == ["app", "bare", "rules"]


def test_per_message_rejects_bad_arguments() -> None:
    done = run("per_message.py", "--messages", "0")
    assert done.returncode == 2
    assert "--messages must be at least 1" in done.stderr
    done = run("per_message.py", "--guard", "no_such_variant")
    assert done.returncode == 2
    assert "invalid choice: 'no_such_variant'" in done.stderr


def test_echo_rejects_bad_arguments() -> None:
    done = run("echo.py", "--server-cpu", "1", "--client-cpu", "1")
    assert done.returncode == 2
    assert "must differ" in done.stderr
    done = run("echo.py", "--duration", "0", "--no-pin")
    assert done.returncode == 2
    assert "--duration must be positive" in done.stderr


@pytest.mark.e2e
def test_echo_tiny_run_reports_both_apps() -> None:
    done = run(
        "echo.py",
        *("--no-pin", "--rounds", "1", "--duration", "0.3", "--warmup", "0"),
        *("--connections", "2"),
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[:3]] == ["app", "bare", "rules"]
    assert "guard admitted 2 connections, rejected 0, closes by guard/app: 0" in done.stdout
    assert "wrong-size echoes" not in done.stdout
