"""ws_guard's own frames to one client (notices), in order, and before ws_guard's close frame.

A rule sends a notice from sync code (``conn.send_soon``): a ``rate.warning``
from a message check, an ``auth.expiring`` from a deadline. The frame cannot
go out in that call, so it is queued here and sent by one task, in the order
the notices were given. A guard close that comes before that task has run (a
client whose burst is already buffered in the server: the app's next
``receive()`` returns the refused message without the event loop running in
between) first lets the queued frames go out, bounded by :data:`ASIDE_GRACE`,
and only then sends its close frame: a notice that was due before the close
reaches the client before it, and nothing goes out after it.

Nothing here runs on the message path: a connection that never sends a
notice never makes an :class:`Asides`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import anyio

from ws_guard._core.tasks import Job, spawn, wait_done
from ws_guard.types import Message

#: Seconds a guard close waits for the notices queued before it to be handed
#: to the server; the rest are dropped and the close frame goes out. As the
#: close frame's own bound in ``finish()`` (``CLOSE_FRAME_GRACE``): only a
#: client that stopped reading makes a send wait this long.
ASIDE_GRACE = 1.0


class Asides:
    """One connection's queued notices and the task that sends them.

    *send* hands one frame to the server (False: the server would not take
    it, the client is gone); *may_send* says whether the connection may still
    send a frame of ws_guard's own (open, or closed by ws_guard with its close
    frame not sent yet).
    """

    __slots__ = ("_frames", "_may_send", "_send", "task")

    def __init__(
        self, send: Callable[[Message], Awaitable[bool]], may_send: Callable[[], bool]
    ) -> None:
        self._send = send
        self._may_send = may_send
        self._frames: deque[Message] = deque()
        #: The task sending the queue, while there is one.
        self.task: Job[None] | None = None

    @property
    def pending(self) -> int:
        """How many frames wait for the task."""
        return len(self._frames)

    def add(self, message: Message) -> None:
        """Queue *message*; it goes out after those queued before it."""
        self._frames.append(message)
        if self.task is None:
            self.task = spawn(self._run())

    async def _run(self) -> None:
        frames = self._frames
        try:
            while frames:
                message = frames.popleft()
                # Checked per frame: the app's close or the client's may come
                # while an earlier frame was being sent.
                if not self._may_send() or not await self._send(message):
                    frames.clear()
                    return
        finally:
            self.task = None

    async def before_close(self) -> None:
        """Wait until the frames queued so far are sent, at most :data:`ASIDE_GRACE` seconds.

        Called by a guard close before its close frame; what is still queued
        or being sent after the grace is dropped. Nothing is queued after
        (``send_soon`` refuses once the connection is not open).
        """
        task = self.task
        if task is not None and not task.done():
            try:
                with anyio.move_on_after(ASIDE_GRACE):
                    await wait_done(task)
            finally:
                if not task.done():
                    task.cancel()  # a client that stopped reading: its close comes next
        self.cancel()

    def cancel(self) -> None:
        """Drop what is queued and stop the task (the connection is over)."""
        self._frames.clear()
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
