"""The leftover-process check finds, kills and fails on processes a test leaves behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from tests.support.children import running
from tests.support.leftovers import ENV, find_leftovers, kill
from tests.support.paths import ROOT


def gone(pid: int) -> bool:
    """The pid is free, or holds only a zombie (dead; init reaps it)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def eventually(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{condition} still false after {timeout} s"
        time.sleep(0.01)


def test_an_orphan_is_found_by_its_token_and_killed() -> None:
    token = uuid.uuid4().hex
    # The shell starts sleep in the background and exits: sleep is re-parented
    # (to init or a subreaper), out of reach of any children() walk.
    shell = subprocess.run(
        ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
        env=dict(os.environ, **{ENV: token}),
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    orphan = int(shell.stdout)
    try:
        assert orphan not in [child.pid for child in psutil.Process().children(recursive=True)]
        leftovers = find_leftovers(token, grace=0.1)
        assert [(left.pid, left.command, left.zombie) for left in leftovers] == [
            (orphan, "sleep 60", False)
        ]
        assert find_leftovers(uuid.uuid4().hex, grace=0.1) == []  # another session's token
        assert kill(leftovers) == []
        eventually(lambda: gone(orphan))
        assert find_leftovers(token, grace=0.1) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)


def test_a_process_without_the_token_is_found_through_its_session() -> None:
    # As Chromium's zygotes: started with a cleared environment, in the
    # session of a process that carries the token.
    token = uuid.uuid4().hex
    with running(
        ["sh", "-c", "env -i sleep 60 & echo $!; wait"],
        env=dict(os.environ, **{ENV: token}),
        stdout=subprocess.PIPE,
        text=True,
        sig=signal.SIGKILL,
    ) as shell:
        assert shell.stdout is not None
        cleared = int(shell.stdout.readline())
        eventually(lambda: psutil.Process(cleared).name() == "sleep")
        assert ENV not in psutil.Process(cleared).environ()
        leftovers = find_leftovers(token, grace=0.1)
        assert sorted(left.pid for left in leftovers) == sorted([shell.pid, cleared])
        assert find_leftovers(uuid.uuid4().hex, grace=0.1) == []
        assert kill(leftovers) == []
        eventually(lambda: gone(cleared))


def test_a_child_never_waited_for_is_a_zombie_leftover() -> None:
    process = subprocess.Popen(["true"])
    try:
        eventually(lambda: psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE)
        leftovers = find_leftovers(uuid.uuid4().hex, grace=0.1)
        assert [(left.pid, left.zombie) for left in leftovers] == [(process.pid, True)]
        assert kill(leftovers) == []  # reaped
        with pytest.raises(psutil.NoSuchProcess):
            psutil.Process(process.pid).status()
    finally:
        process.wait(10)


LEAKY = """
import subprocess
import time

def test_starts_and_forgets():
    subprocess.Popen(["sleep", "60"])
    time.sleep(0.1)  # more than a clock tick between the sleep's start and the next test

def test_clean():
    subprocess.run(["true"], check=True)

def test_after():
    pass
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose subprocess runs can load this plugin (``-p tests.support.leftovers``)."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    # CI measures coverage through PYTEST_ADDOPTS; the inner runs must not
    # measure their own files or write over the outer run's reports.
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return pytester


def leftover_pids(output: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"^pid (\d+) \(", output, flags=re.MULTILINE)]


def test_a_module_that_leaves_a_process_fails_the_run(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_leaky=LEAKY, test_tidy="def test_tidy():\n    pass\n")
    result = inner.runpytest_subprocess("-p", "tests.support.leftovers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_after*",
            "test_leaky.py left 1 process(es) running (killed now):",
            "pid * (running), left by test_leaky.py::test_starts_and_forgets: sleep 60",
            "*leftover processes*",
            "tests left 1 process(es) running; each was killed:",
        ]
    )
    output = result.stdout.str()
    assert "test_tidy" not in output.partition("leftover processes")[2]
    pids = leftover_pids(output)
    # The teardown error and the leftover summary name it; newer pytest repeats it in
    # the short summary too.
    assert len(pids) >= 2
    assert len(set(pids)) == 1
    assert pids[0] == pids[1]
    assert gone(pids[0])


def test_a_process_left_outside_any_test_fails_the_session(inner: pytest.Pytester) -> None:
    # Started at import; the only test is deselected, so no module check runs.
    inner.makepyfile(
        test_import="import subprocess\n"
        "subprocess.Popen(['sleep', '60'])\n\n"
        "def test_never_run():\n    pass\n"
    )
    result = inner.runpytest_subprocess(
        "-p", "tests.support.leftovers", "-p", "no:cacheprovider", "-k", "nope"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # not NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(
        ["*leftover processes*", "pid * (running), left by outside any module's tests: sleep 60"]
    )
    (pid,) = leftover_pids(result.stdout.str())
    assert gone(pid)


def test_a_clean_run_passes(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_tidy="import subprocess\n\ndef test_tidy():\n    subprocess.run(['true'])\n"
    )
    result = inner.runpytest_subprocess("-p", "tests.support.leftovers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert "leftover processes" not in result.stdout.str()


def test_the_session_token_reaches_children() -> None:
    token = os.environ[ENV]
    done = subprocess.run(
        [sys.executable, "-c", f"import os; print(os.environ[{ENV!r}])"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.strip() == token
