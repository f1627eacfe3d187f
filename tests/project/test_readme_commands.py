"""The README's two commands, run as written in a fresh copy and a new virtualenv.

Slow (each installs from the package index into a new virtualenv): excluded
from the default run, run by ``.ci/run`` as ``pytest -m slow``. ``.ci/run``
itself runs the README's test command in full on the oldest and the newest
Python; here the test command runs on one small test file (narrowed with
``PYTEST_ADDOPTS``, the command text unchanged), and the example command is
started, asked for its pages, and stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.fresh_venv import copy_project, make_venv, shell, tail
from tests.support.readme_commands import readme_commands
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

#: Installing from the package index into a new virtualenv, with pip's cache.
INSTALL_TIMEOUT = 600.0


def test_readme_has_the_two_commands() -> None:
    commands = readme_commands()
    assert commands["example"].endswith("python examples/app.py")
    assert commands["test"].endswith("python -m pytest")
    assert all(".[" in command for command in commands.values())


def test_example_command_serves_the_page_status_and_metrics(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "ws_guard")
    env = make_venv(tmp_path / "venv")
    port = free_port()
    log = tmp_path / "example.log"
    # The command as written; only the port is chosen, with the app's own --port.
    command = f"{readme_commands()['example']} --port {port}"
    with shell(command, cwd=project, env=env, log=log) as process:
        deadline = time.monotonic() + INSTALL_TIMEOUT
        while True:
            assert process.poll() is None, f"the example command ended early:\n{tail(log)}"
            assert time.monotonic() < deadline, f"the example never answered:\n{tail(log)}"
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        status = httpx.get(f"http://127.0.0.1:{port}/status.json", timeout=5)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert page.status_code == 200, tail(log)
    assert "<html" in page.text.lower()
    assert status.status_code == 200, tail(log)
    assert status.json()["active_connections"] == 0
    assert metrics.status_code == 200, tail(log)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "ws_guard_" in metrics.text


def test_test_command_installs_and_runs_the_tests(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "ws_guard")
    env = make_venv(tmp_path / "venv")
    env["PYTEST_ADDOPTS"] = "-p no:cacheprovider tests/unit/test_smoke.py"
    log = tmp_path / "test.log"
    with shell(readme_commands()["test"], cwd=project, env=env, log=log) as process:
        returncode = process.wait(INSTALL_TIMEOUT)
    output = log.read_text(errors="replace")
    assert returncode == 0, tail(log)
    assert " passed" in output.splitlines()[-1], tail(log)
    assert "failed" not in output.splitlines()[-1]
