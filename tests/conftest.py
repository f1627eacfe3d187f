from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _ws_guard_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ws_guard")
