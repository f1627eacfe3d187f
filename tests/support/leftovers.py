"""A pytest plugin that fails the run when a test leaves a process running.

At configure time the session puts a fresh token into its own environment
(``WS_GUARD_TEST_SESSION=<uuid4 hex>``); every process it starts, and every
process those start, inherits it. After the last test of each module (once
the module's fixtures are torn down) and once at session end, the plugin
scans the process table (psutil) for live processes carrying this session's
token. That finds orphans re-parented to init, and the helpers of a
browser, which a walk over ``children()`` would miss; processes of other
test sessions carry other tokens and are left alone. A zombie child of the
pytest process itself (started, never waited for) counts too: it cannot be
killed, so it is reaped.

Each leftover is reported (pid, command line, the test during which it
started, by its creation time), killed with SIGKILL, and fails the run: as a
teardown error of the module's last test, as a section of the terminal
summary, and by a non-zero exit status even when every test passed.

Not found: a process started with an environment built from scratch (no
``os.environ``), or one that exec'd with the token removed. No fixture here
is session-scoped, so after each module nothing may be left running; a
session-scoped fixture that owns a process would need this check taught
about it. Run without it: ``pytest -p no:tests.support.leftovers``.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field

import psutil
import pytest

ENV = "WS_GUARD_TEST_SESSION"
#: Seconds a found process gets to finish exiting on its own before it counts
#: (a group a test has just SIGKILLed is still in the table for a moment).
EXIT_GRACE = 1.0
#: Seconds of one clock tick, the resolution of a process's creation time (Linux: 1/100).
TICK = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
#: Seconds a killed leftover gets to disappear.
KILL_TIMEOUT = 5.0


def marked(token: str) -> list[psutil.Process]:
    """Live processes whose environment has ``ENV=token``, and their session mates.

    This process is not in the list. A session mate is a process in the
    session of a marked one, unless that is this process's own session:
    Chromium starts its zygotes (and through them its renderers and GPU
    process) with a cleared environment, in the browser's session. A
    zombie's environment is unreadable, so a zombie is never marked;
    processes of other users raise AccessDenied and are skipped.
    """
    me = os.getpid()
    found: dict[int, psutil.Process] = {}
    marked_sessions: set[int] = set()
    sessions: dict[int, list[psutil.Process]] = {}
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            sid = os.getsid(proc.pid)
            sessions.setdefault(sid, []).append(proc)
            if proc.environ().get(ENV) == token:
                found[proc.pid] = proc
                marked_sessions.add(sid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            continue
    for sid in marked_sessions - {os.getsid(0)}:
        found.update((mate.pid, mate) for mate in sessions[sid])
    return sorted(found.values(), key=lambda proc: proc.pid)


def unreaped() -> list[psutil.Process]:
    """Zombie children of this process: they exited and nobody waited for them."""
    zombies = []
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                zombies.append(child)
        except psutil.NoSuchProcess:
            continue
    return zombies


@dataclass(frozen=True)
class Leftover:
    """One process a test left behind, as seen before it was killed."""

    pid: int
    command: str
    started: float  # creation time, seconds since the epoch
    zombie: bool

    @classmethod
    def of(cls, proc: psutil.Process) -> Leftover | None:
        try:
            with proc.oneshot():
                zombie = proc.status() == psutil.STATUS_ZOMBIE
                command = " ".join(proc.cmdline()) if not zombie else f"[{proc.name()}]"
                return cls(proc.pid, command[:300] or proc.name(), proc.create_time(), zombie)
        except psutil.NoSuchProcess:
            return None


def find_leftovers(token: str, grace: float = EXIT_GRACE) -> list[Leftover]:
    """Unreaped children, and processes carrying *token* still running after *grace* s.

    Sorted by creation time. The zombies are seen before the wait, which
    would reap them; a marked process that exits during the wait is gone.
    """
    zombies = [Leftover.of(proc) for proc in unreaped()]
    running = marked(token)
    if running:
        _, running = psutil.wait_procs(running, timeout=grace)
    seen = zombies + [Leftover.of(proc) for proc in running]
    return sorted((left for left in seen if left is not None), key=lambda left: left.started)


def clock() -> float:
    """Now, in the units of psutil's ``create_time()`` (seconds since the epoch).

    On Linux ``create_time()`` is the boot time from /proc/stat, a whole
    second, plus the process's start in ticks since boot, so it runs up to 1 s
    behind ``time.time()``; the same sum for now keeps the two comparable.
    """
    if hasattr(time, "CLOCK_BOOTTIME"):
        return float(psutil.boot_time()) + time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time()


def kill(leftovers: list[Leftover]) -> list[int]:
    """SIGKILL every leftover and wait for it (reaping our own); the pids still there."""
    procs = []
    for left in leftovers:
        try:
            proc = psutil.Process(left.pid)
            if proc.create_time() != left.started:
                continue  # the pid now belongs to another process
            proc.kill()
            procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=KILL_TIMEOUT)
    return [proc.pid for proc in alive]


@dataclass
class _Module:
    """When each test of the current module ran: (node id, start, end) on :func:`clock`."""

    name: str
    runs: list[tuple[str, float, float]] = field(default_factory=list)

    def culprit(self, started: float) -> str:
        """The test(s) during which a process created at *started* may have come up."""
        # create_time() is truncated to a clock tick: up to TICK s early.
        during = [nodeid for nodeid, start, end in self.runs if start - TICK <= started <= end]
        if during:
            return " or ".join(during)
        before = [nodeid for nodeid, start, _ in self.runs if start <= started]
        if before:
            return f"{self.name} (between tests, after {before[-1]})"
        return f"{self.name} (before its first test: import or collection)"


class LeftoverCheck:
    """The plugin object; one per pytest run, registered as ``leftover-check``."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.previous = os.environ.get(ENV)
        self.reports: list[str] = []
        self.module: _Module | None = None
        self.started = 0.0

    def check(self, where: _Module | None) -> list[str]:
        """Find, report and kill leftovers; the report lines (empty: none)."""
        leftovers = find_leftovers(self.token)
        if not leftovers:
            return []
        survivors = kill(leftovers)
        lines = []
        for left in leftovers:
            origin = where.culprit(left.started) if where else "outside any module's tests"
            state = "zombie, never waited for" if left.zombie else "running"
            lines.append(f"pid {left.pid} ({state}), left by {origin}: {left.command}")
            if left.pid in survivors:
                lines.append(f"pid {left.pid} survived SIGKILL for {KILL_TIMEOUT} s")
        self.reports.extend(lines)
        return lines

    # -- hooks -----------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        name = _module_of(item)
        if self.module is None or self.module.name != name:
            self.module = _Module(name)
        self.started = clock()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> object:
        try:
            result = yield
        except BaseException:
            # The teardown's own error stands; leftovers still go to the summary.
            self.after(item, nextitem)
            raise
        lines = self.after(item, nextitem)
        if lines:
            pytest.fail(
                f"{_module_of(item)} left {len(lines)} process(es) running (killed now):\n"
                + "\n".join(lines),
                pytrace=False,
            )
        return result

    def after(self, item: pytest.Item, nextitem: pytest.Item | None) -> list[str]:
        """Record *item*'s run; after a module's last test (fixtures gone), check."""
        if self.module is not None:
            self.module.runs.append((item.nodeid, self.started, clock()))
        if nextitem is not None and _module_of(nextitem) == _module_of(item):
            return []
        where, self.module = self.module, None
        return self.check(where)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.check(self.module)
        passing = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
        if self.reports and session.exitstatus in passing:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.reports:
            terminalreporter.section("leftover processes", red=True, bold=True)
            terminalreporter.write_line(
                f"tests left {len(self.reports)} process(es) running; each was killed:"
            )
            for line in self.reports:
                terminalreporter.write_line(line)

    def pytest_unconfigure(self) -> None:
        if self.previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self.previous


def _module_of(item: pytest.Item) -> str:
    return item.nodeid.partition("::")[0]


def pytest_configure(config: pytest.Config) -> None:
    check = LeftoverCheck()
    os.environ[ENV] = check.token
    config.pluginmanager.register(check, "leftover-check")
