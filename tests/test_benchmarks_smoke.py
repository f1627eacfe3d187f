"""The benchmark scripts still run: argument parsing, a tiny in-process run, a tiny echo run."""

from __future__ import annotations

import json
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


@pytest.mark.e2e
def test_echo_paired_tiny_run_reports_a_ratio() -> None:
    done = run(
        "echo.py",
        *("--paired", "--no-pin", "--rounds", "1", "--duration", "0.3", "--warmup", "0"),
        *("--connections", "4"),
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == ["guard", "rules"]
    assert float(rows[1].split("|")[2].strip(" *")) > 0
    assert "WARNING" not in done.stdout


@pytest.mark.e2e
@pytest.mark.redis
def test_soak_tiny_run_writes_report_plot_and_json(tmp_path: Path) -> None:
    from services import require_binary

    require_binary("redis-server")
    paths = {name: tmp_path / name for name in ("soak.md", "soak.json", "soak.png")}
    done = run(
        "soak.py",
        *("--duration", "2", "--warmup", "1", "--ramp", "0.5", "--concurrency", "6"),
        *("--key-wait", "4", "--report", str(paths["soak.md"])),
        *("--json", str(paths["soak.json"]), "--plot", str(paths["soak.png"])),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = paths["soak.md"].read_text()
    assert report in done.stdout
    assert "**Short verification run** (2 s, 6 client tasks)" in report
    for heading in ("## Targets", "## Close codes", "## Memory (server RSS)", "## Redis keys"):
        assert heading in report
    data = json.loads(paths["soak.json"].read_text())
    assert data["client"]["attempts"] > 0
    assert data["milestones"]["final"]["status"]["active_connections"] == 0
    assert [s for s in data["samples"] if s.get("rss_kib")]
    assert paths["soak.png"].read_bytes().startswith(b"\x89PNG")
