"""A guarded echo app for a uvicorn subprocess, configured from the environment.

Used by the Redis tests that need a process to die without cleaning up:
``python -m uvicorn rate_app:make_app --factory`` with ``WS_GUARD_TEST_REDIS``
and ``WS_GUARD_TEST_HEARTBEAT`` set.
"""

from __future__ import annotations

import os

from tests.support.apps import echo
from tests.support.rate_helpers import HeaderSubject
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.types import ASGIApp


def make_app() -> ASGIApp:
    cap = rules.MaxConnectionsPerKey(
        2, key=rules.by_user, heartbeat=float(os.environ["WS_GUARD_TEST_HEARTBEAT"])
    )
    guard = Guard(rules=[HeaderSubject(), cap], storage=os.environ["WS_GUARD_TEST_REDIS"])
    return WSGuardMiddleware(echo, guard=guard)
