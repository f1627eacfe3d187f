"""A guarded echo app for a server subprocess whose memory the tests measure.

``python -m uvicorn memory_app:app`` or ``python -m hypercorn memory_app:app``
with ``tests`` on ``PYTHONPATH``; the guard's size limit sits below the
server's, as the docs recommend, so any close the tests see at 1009 for a
message over the server's limit comes from the server.
"""

from __future__ import annotations

from tests.support.apps import echo
from ws_guard import Guard, WSGuardMiddleware, rules

#: The guard's limit; the tests give the server 1 MiB.
GUARD_MAX_BYTES = 64 * 1024

app = WSGuardMiddleware(echo, guard=Guard(rules=[rules.MaxMessageSize(GUARD_MAX_BYTES)]))
