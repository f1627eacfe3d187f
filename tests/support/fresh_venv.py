"""A copy of the project and a new virtualenv, as a user on a fresh machine has.

Used by the slow tests (``pytest -m slow``, run by ``.ci/run``): they install
into the new virtualenv from the package index, exactly as the README says,
so a missing install step fails here instead of on a user's machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def copy_project(target: Path) -> Path:
    """Copy the files git knows (tracked, or untracked and not ignored) to *target*.

    Caches, build output and virtualenvs stay behind, as in a fresh clone;
    outside a git checkout (an unpacked sdist) every file is copied.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(".git", "__pycache__"))
        return target
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    return target


def make_venv(path: Path) -> dict[str, str]:
    """A new virtualenv at *path*; returns the environment of a shell that activated it."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(path)
    env["PATH"] = f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@contextlib.contextmanager
def shell(
    command: str, *, cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run *command* with bash in its own process group; on exit the whole group is killed.

    Output goes to *log*, so a failing test can show it.
    """
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            # Whatever the group left (a server that ignored SIGTERM) goes too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def tail(log: Path, lines: int = 40) -> str:
    """The last *lines* of a log, for an assertion message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
