"""A guarded echo app on uvicorn in its own process (main thread: real signals).

Usage: ``python tests/support/load_server.py PORT DRAIN_WINDOW [hook|nohook]``. With
``hook`` the guard drains on SIGTERM/SIGINT before uvicorn closes WebSockets.
"""

from __future__ import annotations

import sys

import uvicorn

from tests.support.apps import echo
from ws_guard import Guard, WSGuardMiddleware


def main() -> None:
    port, window, mode = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    signals = ["SIGTERM", "SIGINT"] if mode == "hook" else []
    guard = Guard(drain_window=window, drain_signals=signals)
    app = WSGuardMiddleware(echo, guard=guard)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


if __name__ == "__main__":
    main()
