"""The benchmark scripts still run: argument parsing, a tiny in-process run, a tiny echo run.

And they leave no process behind: a script killed at the test's timeout, or
stopped with SIGTERM, or SIGKILLed alone, takes its children with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import psutil
import pytest

from tests.support import children

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
#: The line soak.py writes to stderr once redis-server and the server are up.
SOAK_STARTED = re.compile(r"soak: redis-server pid (\d+), server pid (\d+) on port (\d+)")
#: A soak run far longer than any test waits for it; enough clients that
#: a signal often lands while a connection's callbacks run.
LONG_SOAK = ("--duration", "300", "--warmup", "1", "--concurrency", "20", "--key-wait", "1")
#: Seconds soak.py may take to exit after SIGTERM (idle: under 1 s).
STOP_EXIT = 15.0


def run(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a benchmark script; its whole process group is killed on any way out."""
    return children.run([sys.executable, str(BENCHMARKS / script), *args], timeout=timeout)


def test_per_message_tiny_run_prints_a_table() -> None:
    done = run("per_message.py", "--messages", "50", "--repeats", "2", "--handshakes", "2")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == ["app", "bare", "rules"]


def test_control_tiny_run_prints_the_memory_checks() -> None:
    done = run("control.py", "--calls", "20", "--repeats", "1")
    assert done.returncode == 0, done.stderr
    rows = [line.split("|")[1].strip() for line in done.stdout.splitlines()[2:]]
    assert rows == ["revocation lookup (memory)", "AutoBan.admit (memory)"]
    assert run("control.py", "--calls", "0").returncode == 2


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
def test_echo_paired_runs_the_fastapi_limiter_peer() -> None:
    pytest.importorskip("fastapi_limiter")  # the bench extra's; not in every environment
    done = run(
        "echo.py",
        *("--paired", "--no-pin", "--rounds", "1", "--duration", "0.3", "--warmup", "0"),
        *("--connections", "4", "--guard", "peer_fastapi_limiter"),
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == ["guard", "peer_fastapi_limiter"]
    assert float(rows[1].split("|")[2].strip(" *")) > 0
    assert "WARNING" not in done.stdout


def test_handshake_rejects_bad_arguments() -> None:
    done = run("handshake.py", "--short", "5", "--long", "5")
    assert done.returncode == 2
    assert "need --short < --long" in done.stderr
    done = run("handshake.py", "--loops", "0", "--no-pin")
    assert done.returncode == 2
    assert "--loops must be at least 1" in done.stderr


@pytest.mark.e2e
def test_handshake_paired_tiny_run_reports_a_ratio_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "handshake.json"
    done = run(
        "handshake.py",
        *("--no-pin", "--guard", "rules", "--rounds", "1", "--duration", "0.5"),
        *("--warmup", "0.2", "--loops", "2", "--json", str(out)),
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows] == ["guard", "rules"]
    assert float(rows[1].split("|")[2].strip(" *")) > 0
    assert "WARNING" not in done.stdout
    summary = json.loads(out.read_text())["summary"]["rules"]
    assert summary["errors"] == 0
    assert summary["rate"] > 0
    assert summary["bare_rate"] > 0
    assert summary["redis_trips_per_handshake"] is None  # no Redis in this variant
    png = tmp_path / "handshake.png"
    again = run("handshake.py", "--from-json", str(out), "--plot", str(png))
    assert again.returncode == 0, again.stderr
    assert [line for line in again.stdout.splitlines() if line.startswith("| ")] == rows
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.e2e
def test_handshake_fresh_tokens_run_with_the_verified_cache(tmp_path: Path) -> None:
    out = tmp_path / "handshake.json"
    done = run(
        "handshake.py",
        *("--no-pin", "--guard", "full_cached", "--fresh-tokens", "--rounds", "1"),
        *("--duration", "0.5", "--warmup", "0.2", "--loops", "2", "--json", str(out)),
    )
    assert done.returncode == 0, done.stderr
    saved = json.loads(out.read_text())
    assert saved["settings"]["fresh_tokens"] is True
    assert saved["summary"]["full_cached"]["errors"] == 0
    assert saved["summary"]["full_cached"]["rate"] > 0


@pytest.mark.e2e
@pytest.mark.redis
def test_soak_tiny_run_writes_report_plot_and_json(tmp_path: Path) -> None:
    from tests.support.services import require_binary

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


# -- no process left behind ---------------------------------------------------------------


def long_soak(tmp_path: Path) -> list[str]:
    """soak.py's command for a run no test waits out; its outputs land in *tmp_path*."""
    from tests.support.services import require_binary

    require_binary("redis-server")
    outputs = ("--report", "", "--plot", "", "--json", str(tmp_path / "soak.json"))
    return [sys.executable, str(BENCHMARKS / "soak.py"), *LONG_SOAK, *outputs]


def soak_children(stderr: str) -> list[psutil.Process]:
    """redis-server and the server, from soak.py's start line."""
    found = SOAK_STARTED.search(stderr)
    assert found is not None, f"soak.py did not report its children:\n{stderr}"
    return [psutil.Process(int(pid)) for pid in found.groups()[:2]]


def soak_port(stderr: str) -> int:
    """The server's port, from soak.py's start line."""
    found = SOAK_STARTED.search(stderr)
    assert found is not None, f"soak.py did not report its server:\n{stderr}"
    return int(found.group(3))


def churning(soak: subprocess.Popen[Any], port: int, timeout: float = 30) -> None:
    """Wait until the server behind soak.py on *port* has admitted 10 connections."""

    def admitted() -> int:
        url = f"http://127.0.0.1:{port}/status.json"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(json.load(answer)["handshakes_admitted"])

    wait_until(lambda: soak.poll() is not None or admitted() >= 10, timeout, "soak's clients")
    assert soak.poll() is None


def gone(proc: psutil.Process) -> bool:
    """*proc* has exited (the pid is free, reused, or a zombie waiting for init)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


Started = tuple["subprocess.Popen[Any]", list[psutil.Process], int]


@pytest.fixture
def started_soak(tmp_path: Path) -> Iterator[Started]:
    """A long soak.py in its own session, once its children are up: (it, its children, port)."""
    command = long_soak(tmp_path)
    log = tmp_path / "soak.err"
    with log.open("w") as err, children.running(command, stdout=DEVNULL, stderr=err) as soak:
        wait_until(
            lambda: SOAK_STARTED.search(log.read_text()) or soak.poll() is not None,
            timeout=60,
            what="soak.py starting redis-server and its server",
        )
        assert soak.poll() is None, log.read_text()
        text = log.read_text()
        yield soak, soak_children(text), soak_port(text)


@pytest.mark.e2e
@pytest.mark.redis
def test_soak_killed_at_the_test_timeout_leaves_no_process(tmp_path: Path) -> None:
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        children.run(long_soak(tmp_path), timeout=12)
    procs = soak_children(str(expired.value.stderr))  # up when the timeout hit
    # The group is killed at once; a child in its own session dies of its parent's
    # death signal, which the kernel delivers as the parent exits: poll, bounded.
    wait_until(lambda: all(gone(proc) for proc in procs), 10, "soak's children exiting")


@pytest.mark.e2e
@pytest.mark.redis
def test_soak_stops_its_children_on_sigterm(started_soak: Started) -> None:
    soak, procs, port = started_soak
    churning(soak, port)
    os.kill(soak.pid, signal.SIGTERM)  # the script alone, not its group
    signalled = time.monotonic()
    # Its clients are cancelled, not waited for: it exits within about a second
    # (STOP_EXIT leaves room for a loaded machine). A SIGTERM that landed in a
    # transport callback was once swallowed and the run went on to its end.
    with contextlib.suppress(subprocess.TimeoutExpired):
        soak.wait(STOP_EXIT)
    took = time.monotonic() - signalled
    assert soak.returncode == 128 + signal.SIGTERM, f"still running after {took:.1f} s"
    assert took < STOP_EXIT
    assert [proc for proc in procs if not gone(proc)] == []


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_soak_children_die_when_soak_is_killed(started_soak: Started) -> None:
    soak, procs, _ = started_soak
    os.kill(soak.pid, signal.SIGKILL)  # no cleanup runs in the script
    soak.wait(10)
    wait_until(lambda: all(gone(proc) for proc in procs), 10, "soak's children exiting")


#: A script whose signal lands inside a protocol callback (data_received), where
#: uvloop catches any exception and goes on: run_stoppable must stop it anyway.
#: With "drop", a task drops the first cancellation (as 3.10's wait_for may).
#: Arguments: asyncio|uvloop keep|drop SIGTERM|SIGINT.
SIGNAL_IN_CALLBACK = """
import asyncio, os, signal, sys
import uvloop
from _children import exit_on_sigterm, run_stoppable

class Kick(asyncio.Protocol):
    def data_received(self, data):
        os.kill(os.getpid(), getattr(signal, sys.argv[3]))
        print("signalled", flush=True)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Kick, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x")
    if sys.argv[2] == "drop":
        await asyncio.create_task(dropping())
    await asyncio.sleep(20)
    print("ran on", flush=True)

async def dropping():
    try:
        await asyncio.sleep(20)
    except asyncio.CancelledError:
        print("dropped", flush=True)
    await asyncio.sleep(20)

exit_on_sigterm()
try:
    run_stoppable(main(), {"asyncio": asyncio.run, "uvloop": uvloop.run}[sys.argv[1]])
finally:
    print("cleanup", flush=True)
"""


@pytest.mark.parametrize(
    ("loop", "tasks", "sig", "printed", "status"),
    [
        ("asyncio", "keep", "SIGTERM", "signalled\ncleanup\n", 128 + signal.SIGTERM),
        ("uvloop", "keep", "SIGTERM", "signalled\ncleanup\n", 128 + signal.SIGTERM),
        ("uvloop", "drop", "SIGTERM", "signalled\ndropped\ncleanup\n", 128 + signal.SIGTERM),
        ("uvloop", "keep", "SIGHUP", "signalled\ncleanup\n", 128 + signal.SIGHUP),
        # KeyboardInterrupt: Python ends by SIGINT (3.10's uvloop.run swallowed it)
        ("uvloop", "keep", "SIGINT", "signalled\ncleanup\n", -signal.SIGINT),
    ],
)
def test_run_stoppable_obeys_a_signal_that_lands_in_a_callback(
    loop: str, tasks: str, sig: str, printed: str, status: int
) -> None:
    path = os.pathsep.join(filter(None, [str(BENCHMARKS), os.environ.get("PYTHONPATH")]))
    started = time.monotonic()
    command = [sys.executable, "-c", SIGNAL_IN_CALLBACK, loop, tasks, sig]
    done = children.run(command, timeout=30, env=dict(os.environ, PYTHONPATH=path))
    assert (done.returncode, done.stdout) == (status, printed)
    assert "Fatal error" not in done.stderr
    assert "after the stop signal" not in done.stderr  # every task ended within STOP_GRACE
    assert time.monotonic() - started < STOP_EXIT


@pytest.mark.e2e
def test_slow_reader_tiny_run_finds_the_send_blocked_and_the_guard_closing() -> None:
    done = run("slow_reader.py", "--servers", "websockets-sansio", "--seconds", "0.5")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| websockets")]
    assert [row.split("|")[2].strip() for row in rows] == ["blocks"]
    done = run("slow_reader.py", "--servers", "wsproto", "--seconds", "3", "--guard", "0.3")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| wsproto")]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].split("|")[2:-1]]
    assert cells[1:4] == ["{'slow_consumer': 1}", "1", "0.0 s"]
    assert cells[4] == "EOF, no close frame (1006)"


@pytest.mark.e2e
def test_slow_reader_finds_granian_blocking_and_daphne_buffering_every_send() -> None:
    """docs/servers.md, "Backpressure": daphne's send() never waits, so SlowConsumer never fires."""
    done = run("slow_reader.py", "--servers", "granian", "daphne", "--seconds", "1", "--cap", "16")
    assert done.returncode == 0, done.stderr
    table = [[cell.strip() for cell in line.split("|")[1:-1]] for line in done.stdout.splitlines()]
    rows = {cells[0]: cells[1:] for cells in table if cells[:1] in (["granian"], ["daphne"])}
    assert rows["granian"][0] == "blocks"
    assert rows["daphne"][:2] == ["buffers", "16384 KiB"]  # the whole cap, unread
    done = run(
        "slow_reader.py", "--servers", "daphne", "--seconds", "1", "--cap", "16", "--guard", "0.3"
    )
    assert done.returncode == 0, done.stderr
    (row,) = [line for line in done.stdout.splitlines() if line.startswith("| daphne")]
    assert [cell.strip() for cell in row.split("|")[2:5]] == ["0.0 s", "{}", "0"]


@pytest.mark.e2e
def test_scale_tiny_run_counts_deadlines_and_drains_every_connection(tmp_path: Path) -> None:
    paths = {name: tmp_path / name for name in ("scale.json", "scale.png")}
    done = run(
        "scale.py",
        *("--levels", "20,50", "--idle", "0.2", "--window", "0.5"),
        *("--json", str(paths["scale.json"]), "--plot", str(paths["scale.png"])),
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    # header, then one row per level: connections and the guard's deadlines (two each)
    assert [[cell.strip() for cell in row.split("|")[1:6:4]] for row in rows[1:]] == [
        ["20", "40"],
        ["50", "100"],
    ]
    data = json.loads(paths["scale.json"].read_text())
    assert [row["connections"] for row in data["bare"]["rows"]] == [0, 20, 50]
    drain = data["guarded"]["drain"]
    assert drain["closes"] == {"1012": 50}
    assert (drain["after"]["active"], drain["after"]["deadlines"]) == (0, 0)
    assert drain["after"]["timer_armed"] is False
    assert paths["scale.png"].read_bytes().startswith(b"\x89PNG")


def test_scale_refuses_levels_past_the_open_file_limit() -> None:
    done = run("scale.py", "--levels", "10,5")
    assert done.returncode == 2
    assert "--levels must be positive and increasing, not '10,5'" in done.stderr
    done = run("scale.py", "--levels", "100000000")
    assert done.returncode == 2
    assert "--levels up to 100000000 needs 100000200 open files in the server" in done.stderr


@pytest.mark.e2e
@pytest.mark.redis
def test_scale_cluster_tiny_run_holds_the_cap_across_two_workers(tmp_path: Path) -> None:
    from tests.support.services import require_binary

    require_binary("redis-server")
    path = tmp_path / "cluster.json"
    done = run(
        "scale_cluster.py",
        *("--users", "4", "--per-user", "3", "--cap", "2", "--settle", "1"),
        *("--json", str(path)),
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(path.read_text())
    assert (data["attempts"], data["held"], data["users_holding"]) == (12, 8, 4)
    assert (data["held_per_user_min"], data["held_per_user_max"]) == (2, 2)
    assert data["closes"] == {"1008": 4}
    assert len(data["workers_rss_after"]) == 2
    assert data["redis_commands_per_handshake"] > 0
