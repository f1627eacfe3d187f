"""Closing a connection: ws_guard's own closes, the app's, the client's, and their counting."""

from __future__ import annotations

import asyncio
import logging

import anyio

from ws_guard._core.conn_base import ConnectionBase, close_frame
from ws_guard._core.decisions import Close
from ws_guard._core.request import loggable_path
from ws_guard._core.states import CLOSED, CONNECTING, GUARD_CLOSED, LIVE
from ws_guard._core.tasks import spawn, wait_done
from ws_guard.codes import (
    ABNORMAL_CLOSURE,
    HTTP_FORBIDDEN,
    INTERNAL_ERROR,
    NORMAL,
    REASON_INTERNAL_ERROR,
    is_sendable_code,
    sendable_code_for,
    truncate_reason,
)
from ws_guard.types import Message

logger = logging.getLogger("ws_guard")

#: Seconds ws_guard waits for a close frame of its own to be handed to the
#: server (in ``Connection.finish`` and after an app crash) before it gives
#: up on a client that stopped reading.
CLOSE_FRAME_GRACE = 1.0


def server_refused_send(exc: BaseException) -> bool:
    """Whether *exc* is, or was raised while handling, the server's ``ClientDisconnected``.

    uvicorn raises it from a send to a client that left; Starlette turns it
    into ``WebSocketDisconnect(1006)`` raised from it, so it sits in the
    exception's context chain. A ``WebSocketDisconnect`` the app raises on
    its own (a bad token) has no such context. An exception group (an app
    that sends from several tasks of a task group) counts when every
    exception in it does. Matched by name: no server imports, and the same
    on Python 3.10, where groups come from the ``exceptiongroup`` backport.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = {cls.__name__ for cls in type(current).__mro__}
        if "ClientDisconnected" in names:
            return True
        if "BaseExceptionGroup" in names:
            members: tuple[BaseException, ...] = tuple(getattr(current, "exceptions", ()))
            return bool(members) and all(server_refused_send(member) for member in members)
        current = current.__cause__ or current.__context__
    return False


class Closing(ConnectionBase):
    """How a connection closes, and how each close is counted once."""

    __slots__ = ()

    def close_soon(self, close: Close) -> None:
        """Close from outside the message path (a deadline, a drain, a shed)."""
        if close.shadow:
            self._record_shadow(close)
            return
        if self.state in LIVE:
            self._mark_guard_closed(close)
            self._close_task = spawn(self._close_frame_after_asides(close))
        elif self.state == CONNECTING and self.admitted:
            self._mark_guard_closed(close)
            self._close_task = spawn(self._accept_and_close(close))

    async def close(self, close: Close) -> None:
        """Close now and wait until the close frame is handed to the server."""
        self.close_soon(close)
        task = self._close_task
        if task is not None:
            await wait_done(task)
            if not task.cancelled():
                task.result()  # a bug in sending it is raised here, as awaiting it did

    async def _close_open(self, close: Close) -> None:
        """Close a live connection from the message path; return once the frame is handed over.

        With no notice pending (nearly always) the frame is sent here, in
        the app's ``receive()``. With one pending, the wait for it and the
        frame go out from a task of their own, as :meth:`close_soon`'s do:
        an app that cancels the ``receive()`` waiting here (its ``wait_for``
        timing out) cannot stop the close frame, and ``finish()`` bounds
        that task. A task for every close made a connection closed on a message
        about a third slower in process (ScriptedWebSocket, best of 5 x 1000),
        so it is made only when needed.
        """
        self._mark_guard_closed(close)
        asides = self._asides
        if asides is None or asides.task is None:
            await self._send_quietly(close_frame(close.code, close.wire_reason))
            return
        task = self._close_task = spawn(self._close_frame_after_asides(close))
        await wait_done(task)
        if not task.cancelled():
            task.result()  # a bug in sending it is raised here, as awaiting it did

    async def _close_frame_after_asides(self, close: Close) -> bool:
        """The close frame of a guard close, after ws_guard's notices queued before it.

        A notice due before the close (a ``rate.warning`` for the burst the
        close refuses, an ``auth.expiring``) reaches the client first; see
        ``_core/asides.py`` for the bound. False when the server would not
        take the close frame.
        """
        asides = self._asides
        if asides is not None:
            await asides.before_close()
        return await self._send_quietly(close_frame(close.code, close.wire_reason))

    async def _accept_and_close(self, close: Close) -> None:
        accept: Message = {"type": "websocket.accept"}
        for rule in self.guard.plan.accept_rules:
            rule.on_accept(self.full, accept)  # e.g. the subprotocol a browser insists on
        if await self._send_quietly(accept):
            await self._send_quietly(close_frame(close.code, close.wire_reason))

    def _mark_guard_closed(self, close: Close) -> None:
        self._guard_close = close
        self._set_closed(GUARD_CLOSED)
        self.guard.reporter.record_close(self.full, close, initiator=close.initiator)
        timeout = self.guard.app_exit_timeout
        if timeout is not None and self.task is not None:
            self.call_at(self.guard.scheduler.now() + timeout, self._cancel_app)

    def _cancel_app(self) -> None:
        """The app outlived its connection by ``app_exit_timeout``: stop it.

        Sends after a guard close are dropped, so a handler that never calls
        ``receive()`` would run forever. The middleware absorbs this cancel,
        so the server sees an ordinary return.
        """
        task = self.task
        if self._finished or task is None or (isinstance(task, asyncio.Task) and task.done()):
            return
        self.cancelled_by_guard = True
        logger.info(
            "ws_guard cancelled an app handler still running %.1f s after its connection "
            "was closed (code=%d) path=%s",
            self.guard.app_exit_timeout or 0.0,
            self._guard_close.code if self._guard_close is not None else 0,
            loggable_path(self.path),
        )
        task.cancel()

    def _client_gone(self) -> None:
        """The server refused an app send because the client left (ClientDisconnected).

        Counted as the client's abnormal close, so the app's resulting
        exception is not mistaken for an app crash (1011).
        """
        if self.state in LIVE:
            self._set_closed(CLOSED)
            self.guard.reporter.record_close(self.full, None, ABNORMAL_CLOSURE, "client")

    def client_closed(self, message: Message) -> None:
        """The server reported the client's ``websocket.disconnect``: count it once."""
        if self.state in LIVE:
            self._set_closed(CLOSED)
            self.guard.reporter.record_close(
                self.full, None, int(message.get("code", 1005)), "client"
            )

    def _app_closed(self, message: Message) -> Message:
        """Count the app's ``websocket.close``; the message to hand to the server.

        Before accept nothing goes on the wire but the server's HTTP 403, so
        the message passes untouched and is counted as 403. After accept the
        close frame must be valid: a reason is cut to 123 bytes (a longer one
        makes uvicorn drop the TCP connection, 1006), and a code RFC 6455 does
        not allow in a frame (1005, 1006, 2000, ...) is replaced, since servers
        drop TCP (websockets) or send another code (wsproto: 1000) for it; see
        :func:`sendable_code_for`. The code counted is the one sent.
        """
        accepted = self.state != CONNECTING
        self._set_closed(CLOSED)
        if not accepted:
            self.guard.reporter.record_close(self.full, None, HTTP_FORBIDDEN, "app")
            return message
        reason = message.get("reason")
        if isinstance(reason, str) and reason:
            message["reason"] = truncate_reason(reason)
        # What ws_guard cannot read goes to the server untouched (FastAPI's
        # validation close carries a list as its reason; an app may pass a
        # None code): bookkeeping must never raise inside the app's send().
        code = message.get("code", NORMAL)
        if not isinstance(code, int) or isinstance(code, bool):
            counted = NORMAL
        elif is_sendable_code(code):
            counted = int(code)
        else:
            counted = sendable_code_for(code)
            self.guard.reporter.warn_unsendable_code(code, counted)
            message = {**message, "code": counted}
        self.guard.reporter.record_close(self.full, None, counted, "app")
        return message

    def _app_refused(self, message: Message) -> None:
        """The app answered the handshake with its own HTTP response: count its status."""
        self._set_closed(CLOSED)
        status = message.get("status")
        if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
            self.guard.reporter.record_close(self.full, None, status, "app")

    async def app_crashed(self, exc: BaseException) -> None:
        """The app raised: the client gets 1011 instead of a dropped TCP (1006).

        Any exception counts, ``WebSocketDisconnect`` too: an app raises it
        itself (on a bad token, say) while the client is still there. The
        client's 1006 is counted only when the client is known to be gone:
        ws_guard saw its ``websocket.disconnect`` (the state is no longer
        live), or the server refused a send (``ClientDisconnected``, also
        behind Starlette's ``WebSocketDisconnect``), or it refuses this close.
        """
        if self.state in LIVE:
            self._set_closed(CLOSED)
            close = Close(INTERNAL_ERROR, REASON_INTERNAL_ERROR, REASON_INTERNAL_ERROR)
            frame = close_frame(close.code, close.wire_reason)
            if server_refused_send(exc):
                # A send the app made on the fast path (not seen by ws_guard) hit a gone client.
                self.guard.reporter.record_close(self.full, None, ABNORMAL_CLOSURE, "client")
            else:
                sent = False
                # Bounded: the middleware shields this call (so the app's
                # exception survives a cancel), and a client that stopped
                # reading never takes the frame.
                with anyio.move_on_after(CLOSE_FRAME_GRACE):
                    sent = await self._send_quietly(frame)
                if sent:
                    self.guard.reporter.record_close(self.full, close, initiator="app")
                    return
                # The server refused the close, or nobody took it: the client is gone.
                self.guard.reporter.record_close(self.full, None, ABNORMAL_CLOSURE, "client")

    async def app_returned(self) -> None:
        """The app returned while open: close normally rather than drop TCP.

        Counted as what happened: the app's 1000 when the close went out, the
        client's 1006 when the server refused it (the client left, and the
        app, having caught its own failed send, returned normally).
        """
        if self.state in LIVE:
            self._set_closed(CLOSED)
            if await self._send_quietly(close_frame(NORMAL, "")):
                self.guard.reporter.record_close(self.full, None, NORMAL, "app")
            else:
                self.guard.reporter.record_close(self.full, None, ABNORMAL_CLOSURE, "client")
