"""Child processes of a benchmark script (servers, redis-server) die with the script.

Two ways out would otherwise leave them running:

- SIGTERM (or SIGHUP) kills a Python script without running its ``finally``
  blocks; :func:`exit_on_sigterm` turns both into ``SystemExit`` in the main
  thread, so the cleanup that stops the children runs.
- SIGKILL runs nothing; :func:`spawn` asks Linux to SIGKILL the child when the
  script dies (``prctl(PR_SET_PDEATHSIG)``, prctl(2)). Elsewhere the child
  survives; whoever SIGKILLs a script should signal its process group (the
  tests start each script in a session of its own and do).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that sets the parent-death signal to SIGKILL (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(args: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **popen)``; on Linux the child dies when this process does.

    The death signal follows the *thread* that forked: spawn from the main
    thread (``preexec_fn`` is not safe while other threads run, either).
    """
    return subprocess.Popen(args, preexec_fn=_die_with_parent(), **popen)


def exit_on_sigterm() -> None:
    """Make SIGTERM and SIGHUP raise ``SystemExit(128 + signal)`` in the main thread."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
