"""Finding the outside binaries some tests need (redis-server, chromium).

Locally a missing binary skips the test with a message that says how to
install it. In CI (``WS_GUARD_REQUIRE_SERVICES=1``, set by ``.ci/run``) it
fails instead, so a green CI run means the test really ran.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str, *, apt_package: str | None = None) -> str:
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} not found on PATH; install it with: apt-get install -y {apt_package or name}"
    if os.environ.get("WS_GUARD_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)
