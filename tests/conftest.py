from __future__ import annotations

import logging

import pytest

from tests.support.backends import BOTH_BACKEND_FILES, convert_module
from tests.support.paths import TESTS

# leftovers: the run fails when a test leaves a process running (see its docstring);
# redis_fixtures: shared_redis, redis and own_redis for every Redis-backed test.
pytest_plugins = ("tests.support.leftovers", "tests.support.redis_fixtures", "pytester")


@pytest.fixture(autouse=True)
def _ws_guard_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ws_guard")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "asyncio_only: async test that stays on asyncio in a both-backend file"
        " (tests/support/backends.py)",
    )


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Run the async tests of BOTH_BACKEND_FILES on asyncio and trio (tests/support/backends.py)."""
    if (
        isinstance(collector, pytest.Module)
        and collector.path.is_relative_to(TESTS)
        and collector.path.relative_to(TESTS).as_posix() in BOTH_BACKEND_FILES
    ):
        convert_module(collector.obj)
