"""Child processes for tests: each in a session of its own, stopped as a whole group.

A test that starts a process must leave none behind, however it ends: pass,
failure, a ``subprocess`` timeout, KeyboardInterrupt. Killing only the child
is not enough: a benchmark script or a browser starts children of its own,
and a SIGKILL to the parent skips its cleanup, so its children live on,
re-parented to init. Every child here therefore starts with
``start_new_session=True`` (its own session and process group, whose id is
its pid, and which its own children join unless they call ``setsid``), and
every exit path signals the whole group (``os.killpg``), then SIGKILLs
whatever of the group outlived the signal.

The session-wide check in ``leftovers`` catches what escapes this anyway.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

#: Seconds a stopped group gets to exit after its last signal (SIGKILL is not refusable).
REAP_TIMEOUT = 10.0


def spawn(args: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **popen)`` in a new session; stop it with :func:`stop`."""
    return subprocess.Popen(args, start_new_session=True, **popen)


def signal_group(process: subprocess.Popen[Any], sig: int) -> None:
    """Send *sig* to every process in *process*'s group; an empty group is no error."""
    # The group id stays reserved while any member lives, so this cannot reach
    # strangers; once the group is empty, ESRCH (ProcessLookupError) says so.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def stop(process: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Stop *process* and its whole group: *sig*, up to *grace* s, then SIGKILL; reap it.

    SIGKILL goes to the group even when the leader exited in time, for
    members that outlived it. Raises ``subprocess.TimeoutExpired`` only if the
    leader survives SIGKILL for ``REAP_TIMEOUT`` s (an uninterruptible sleep).
    """
    if sig != signal.SIGKILL:
        signal_group(process, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    signal_group(process, signal.SIGKILL)
    process.wait(REAP_TIMEOUT)


@contextlib.contextmanager
def running(
    args: Sequence[str], *, sig: int = signal.SIGTERM, grace: float = 10.0, **popen: Any
) -> Iterator[subprocess.Popen[Any]]:
    """:func:`spawn` for the ``with`` block; :func:`stop` (*sig*, *grace*) on any exit."""
    process = spawn(args, **popen)
    try:
        yield process
    finally:
        stop(process, sig, grace)


def run(
    args: Sequence[str],
    *,
    timeout: float,
    capture_output: bool = True,
    text: bool = True,
    check: bool = False,
    **popen: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run`` that leaves no process of the child's group behind.

    On timeout the whole group is killed and ``subprocess.TimeoutExpired`` is
    raised carrying the output so far (``.stdout``, ``.stderr``), as
    ``subprocess.run`` does, which kills only the child. On any other way
    out (KeyboardInterrupt, a failing ``check``, success) the rest of the
    group is killed too. ``check=True`` raises ``CalledProcessError`` on a
    non-zero exit status.
    """
    if capture_output:
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
    process = spawn(args, text=text, **popen)
    try:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            signal_group(process, signal.SIGKILL)
            expired.stdout, expired.stderr = process.communicate(timeout=REAP_TIMEOUT)
            raise
    finally:
        stop(process, signal.SIGKILL)
    if check and process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, args, stdout, stderr)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
