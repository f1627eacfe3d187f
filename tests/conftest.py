from __future__ import annotations

import logging

import pytest

# leftovers: the run fails when a test leaves a process running (see its docstring).
pytest_plugins = ("leftovers", "pytester")


@pytest.fixture(autouse=True)
def _ws_guard_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ws_guard")
