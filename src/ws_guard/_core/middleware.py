"""The ASGI middleware: routes scopes, runs lifespan hooks, drives connections."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ws_guard._core.connection import Connection
from ws_guard._core.decisions import Close
from ws_guard._core.guard import Guard
from ws_guard._core.tasks import on_asyncio
from ws_guard.codes import INTERNAL_ERROR, REASON_UNSUPPORTED_BACKEND
from ws_guard.errors import ConfigurationError, UnsupportedBackendError
from ws_guard.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("ws_guard")

#: The app as called: ASGI says it returns None, but whatever it returns is passed on.
_AnyApp = Callable[[Scope, Receive, Send], Awaitable[Any]]


class WSGuardMiddleware:
    """Pure ASGI middleware that enforces a :class:`Guard` on WebSocket scopes.

    ``http`` scopes and unguarded paths pass straight through. ``lifespan``
    passes through too, and its startup/shutdown start and stop the guard.
    """

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        if not isinstance(guard, Guard):
            raise ConfigurationError(f"guard must be a ws_guard.Guard, not {guard!r}")
        self.app = app
        self.guard = guard
        self._backend_logged = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> Any:
        # The app's return value goes back to the server for every scope type:
        # ASGI says None, and uvicorn logs anything else ("ASGI callable should
        # return None"); swallowing it here would hide that mistake.
        kind = scope["type"]
        guard = self.guard
        app: _AnyApp = self.app
        if kind == "websocket" and guard.guards_path(scope["path"], scope.get("root_path", "")):
            # Inline rather than a helper coroutine: one frame less for every
            # open connection, and one call less on every message's path.
            # The server runs no lifespan: start on first use.
            if not guard.started and not await self._start_on_first_use(scope, receive, send):
                return None
            conn = Connection(guard, scope, receive, send)
            try:
                if not await conn.handshake():
                    return None
                # On asyncio ws_guard stops an app that outlives its connection
                # by cancelling its task; elsewhere (trio) by a cancel scope,
                # which absorbs that cancel itself.
                app_scope = None if on_asyncio() else anyio.CancelScope()
                conn.task = asyncio.current_task() if app_scope is None else app_scope
                guard.lifecycle.drain_admitted(conn)
                result: Any = None  # stays None when the cancel scope stops the app
                # Decided by the plan, once per guard: without a rule that
                # watches sends, the app gets the plain send path.
                app_send = conn.watched_send() if guard.plan.send_rules else conn.send
                app_receive: Receive = conn.app_receive()
                if guard.count_messages:  # opt-in: a frame more per message each way
                    app_receive, app_send = conn.counted(app_send)
                try:
                    if app_scope is None:
                        result = await app(scope, app_receive, app_send)
                    else:
                        with app_scope:
                            result = await app(scope, app_receive, app_send)
                except asyncio.CancelledError:
                    if not conn.cancelled_by_guard:
                        raise
                    _uncancel()  # ws_guard's own cancel ends here, as an ordinary return
                    return None
                except Exception as exc:
                    # Shielded: a server (or test client) that cancels the
                    # handler while the 1011 goes out would replace the app's
                    # exception with its CancelledError, and the server would
                    # never see or log the app's error. Bounded in app_crashed.
                    with anyio.CancelScope(shield=True):
                        await conn.app_crashed(exc)
                    raise
                await conn.app_returned()
                return result
            finally:
                await conn.finish()
        elif kind == "lifespan":
            return await app(scope, self._lifespan_receive(receive), send)
        return await app(scope, receive, send)

    async def _start_on_first_use(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Start the guard from a connection; False when it refused it (closed 1011).

        A feature that needs asyncio on another backend (trio) is refused here
        too, not only at lifespan startup: the connection is closed
        ``1011 unsupported_backend`` and one error names the feature, so
        nothing runs unguarded and no traceback reaches the server.
        """
        try:
            await self.guard.startup()
        except UnsupportedBackendError as exc:
            if not self._backend_logged:
                self._backend_logged = True
                logger.error("ws_guard refuses WebSocket connections: %s", exc)
            conn = Connection(self.guard, scope, receive, send)
            await conn.refuse(
                Close(INTERNAL_ERROR, REASON_UNSUPPORTED_BACKEND, REASON_UNSUPPORTED_BACKEND)
            )
            await conn.finish()
            return False
        return True

    def _lifespan_receive(self, receive: Receive) -> Receive:
        guard = self.guard

        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await guard.startup()
            elif message["type"] == "lifespan.shutdown":
                await guard.shutdown()
            return message

        return lifespan_receive


def _uncancel() -> None:
    """Forget one cancel request on the current task (Python 3.11+ counts them)."""
    task = asyncio.current_task()
    uncancel = getattr(task, "uncancel", None)
    if uncancel is not None:
        uncancel()
