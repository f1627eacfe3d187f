"""``drain_signals``: bad entries are refused, and the signal always reaches what it replaced.

The hook drains, then forwards the signal to the handler it replaced: a
callable is called (``test_shed_drain.py``), ``SIG_DFL`` is restored and the
signal raised again, so the process ends as it would have without ws_guard,
and ``SIG_IGN`` stays ignored. The in-process cases use ``SIGWINCH``, whose
default action is to ignore (POSIX), so raising it again cannot end the test
run; the subprocess case shows SIGTERM ending a real process after the drain.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import Iterator

import pytest

from tests.support.children import run
from tests.support.helpers import eventually
from ws_guard import ConfigurationError, Guard
from ws_guard._core.signals import SignalDrain, parse_signals

SIG = signal.SIGWINCH


@pytest.fixture
def winch_handler() -> Iterator[None]:
    """Put back whatever handled SIGWINCH before the test."""
    previous = signal.getsignal(SIG)
    try:
        yield
    finally:
        signal.signal(SIG, previous)


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        (1.5, "1.5"),
        (True, "True"),  # a bool is an int to Python, never a signal here
        (None, "None"),
        (b"SIGTERM", "b'SIGTERM'"),
        (999, "999"),
        ("TERM", "'TERM'"),
    ],
)
def test_an_entry_that_is_not_a_signal_is_named(entry: object, shown: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Guard(drain_signals=["SIGINT", entry])  # type: ignore[list-item]
    assert str(info.value) == f"drain_signals entry {shown} is not a signal"


@pytest.mark.parametrize("values", [15, None, b"SIGTERM"])
def test_drain_signals_must_be_a_list(values: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_signals(values)  # type: ignore[arg-type]
    assert str(info.value) == f"drain_signals must be a list of signals, not {values!r}"


def test_names_are_case_insensitive_and_repeats_count_once() -> None:
    assert parse_signals(["sigterm", "SIGTERM", 15, signal.SIGHUP]) == (
        signal.SIGTERM,
        signal.SIGHUP,
    )


async def test_a_default_disposition_is_restored_and_the_signal_raised_again(
    winch_handler: None,
) -> None:
    signal.signal(SIG, signal.SIG_DFL)
    guard = Guard(drain_signals=[SIG], drain_window=0.05)
    await guard.startup()
    ours = signal.getsignal(SIG)
    assert ours not in (signal.SIG_DFL, signal.SIG_IGN)
    signal.raise_signal(SIG)
    await eventually(lambda: signal.getsignal(SIG) == signal.SIG_DFL, what="SIG_DFL restored")
    assert guard.draining
    await guard.shutdown()
    # Ours was no longer installed: shutdown leaves the default in place.
    assert signal.getsignal(SIG) == signal.SIG_DFL


async def test_an_ignored_signal_stays_ignored_after_the_drain(winch_handler: None) -> None:
    signal.signal(SIG, signal.SIG_IGN)
    guard = Guard(drain_signals=[SIG], drain_window=0.05)
    hook = guard.lifecycle.signal_drain
    await guard.startup()
    signal.raise_signal(SIG)
    await eventually(lambda: hook._task is not None and hook._task.done(), what="drain ended")
    assert guard.draining
    assert hook.installed  # forwarding to SIG_IGN does nothing, ours stays until shutdown
    signal.raise_signal(SIG)  # a second signal goes straight to SIG_IGN: nothing happens
    await guard.shutdown()
    assert signal.getsignal(SIG) == signal.SIG_IGN


async def test_two_signals_before_the_loop_runs_start_one_drain(winch_handler: None) -> None:
    forwarded: list[int] = []
    signal.signal(SIG, lambda signum, frame: forwarded.append(signum))
    guard = Guard(drain_signals=[SIG], drain_window=0.05)
    hook = guard.lifecycle.signal_drain
    await guard.startup()
    signal.raise_signal(SIG)
    signal.raise_signal(SIG)  # no await between: both find no drain task yet
    await eventually(lambda: bool(forwarded), what="the drain forwarding the signal")
    assert hook._task is not None
    assert hook._task.done()
    assert forwarded == [SIG]  # one drain, forwarded once
    await guard.shutdown()


def test_install_is_idempotent_and_a_hook_without_signals_installs_nothing(
    winch_handler: None,
) -> None:
    forwarded: list[int] = []
    signal.signal(SIG, lambda signum, frame: forwarded.append(signum))
    before = signal.getsignal(SIG)

    async def main() -> tuple[bool, bool, bool]:
        empty = SignalDrain(Guard(), ())
        hook = SignalDrain(Guard(), (SIG,))
        return empty.install(), hook.install(), hook.install()

    hook_results = asyncio.run(main())
    assert hook_results == (False, True, True)
    assert signal.getsignal(SIG) is not before  # installed once, in front
    # The loop that installed it is closed now: a signal is passed on at once.
    signal.raise_signal(SIG)
    assert forwarded == [SIG]


def test_uninstall_leaves_a_handler_installed_after_ours(winch_handler: None) -> None:
    signal.signal(SIG, signal.SIG_IGN)

    def later(signum: int, frame: object) -> None:
        pass

    async def main() -> SignalDrain:
        hook = SignalDrain(Guard(), (SIG,))
        assert hook.install()
        signal.signal(SIG, later)  # someone else replaced ours
        hook.uninstall()
        return hook

    hook = asyncio.run(main())
    assert not hook.installed
    assert signal.getsignal(SIG) is later


CHILD = """
import asyncio, signal, sys
sys.path.insert(0, ".")  # the project root, for the tests package
from tests.support.apps import echo
from ws_guard import Guard, WSGuardMiddleware
from ws_guard.testing import ScriptedWebSocket

async def main():
    guard = Guard(drain_signals=["SIGTERM"], drain_window=0.05)
    await guard.startup()
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    signal.raise_signal(signal.SIGTERM)
    close = await ws.expect("websocket.close", timeout=10)
    print(close["code"], close["reason"], flush=True)
    await ws.disconnect(close["code"])  # the drain waits for this before it forwards
    await asyncio.sleep(10)  # the default action ends the process long before
    print("survived", flush=True)

asyncio.run(main())
"""


def test_sigterm_ends_the_process_after_the_drain() -> None:
    result = run([sys.executable, "-c", CHILD], timeout=30)
    # retry-after is drawn from [1, 2) s, sent in tenths rounded up (test_shed_drain.py).
    hint = r"(1(\.[1-9])?|2)"
    assert re.fullmatch(rf"1012 restarting; retry-after={hint}\n", result.stdout), result.stderr
    assert result.returncode == -signal.SIGTERM, result.stderr
