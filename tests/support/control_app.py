"""A guarded echo app with JWT auth on Redis storage, for uvicorn subprocesses.

``python -m uvicorn tests.support.control_app:make_app --factory`` with
``WS_GUARD_TEST_REDIS`` set: the control-plane tests run two of them, as two
workers (or hosts) of one app sharing the namespace ``control-test``.
"""

from __future__ import annotations

import os

from tests.support.apps import echo
from tests.support.jwt_keys import SECRET
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.types import ASGIApp

NAMESPACE = "control-test"


def make_app() -> ASGIApp:
    guard = Guard(
        rules=[
            rules.AutoBan(after=3, within=60, ban=30),
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token")),
        ],
        storage=os.environ["WS_GUARD_TEST_REDIS"],
        namespace=NAMESPACE,
    )
    return WSGuardMiddleware(echo, guard=guard)
