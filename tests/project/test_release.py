"""The package as released: sdist and wheel build, pass ``twine check``, and the
wheel installs alone and imports nothing optional.

Slow (builds in an isolated environment and installs into a new virtualenv):
excluded from the default run, run by ``.ci/run`` as ``pytest -m slow``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import ws_guard
from tests.support.fresh_venv import ROOT, copy_project, make_venv

pytestmark = pytest.mark.slow

#: Modules only an extra brings; ``import ws_guard`` must load none of them.
OPTIONAL = ("starlette", "uvicorn", "redis", "prometheus_client", "opentelemetry", "websockets")
#: No single file in the sdist is larger: measured data and figures stay in the repository.
MAX_SDIST_FILE = 100_000


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("release")
    project = copy_project(tmp / "ws_guard")
    out = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(project)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_twine_check_passes(dist: dict[str, Path]) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "twine",
            "check",
            "--strict",
            str(dist["wheel"]),
            str(dist["sdist"]),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASSED") == 2


def test_wheel_carries_license_types_and_metadata(dist: dict[str, Path]) -> None:
    version = ws_guard.__version__
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"ws_guard-{version}.dist-info/METADATA").decode()
    assert f"ws_guard-{version}.dist-info/licenses/LICENSE" in names
    assert "ws_guard/py.typed" in names
    assert not [name for name in names if name.startswith(("tests/", "benchmarks/", "docs/"))]
    assert f"\nVersion: {version}\n" in metadata
    assert "License-Expression: MIT" in metadata
    for label in ("Homepage", "Documentation", "Repository", "Issues", "Changelog"):
        assert f"Project-URL: {label}, https://" in metadata


def test_classifiers_name_every_python_that_requires_python_claims(dist: dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        metadata = wheel.read(f"ws_guard-{ws_guard.__version__}.dist-info/METADATA").decode()
    (oldest,) = re.findall(r"^Requires-Python: >=3\.(\d+)$", metadata, re.MULTILINE)
    minors = sorted(
        int(m) for m in re.findall(r"^Classifier: .*Python :: 3\.(\d+)$", metadata, re.MULTILINE)
    )
    assert minors == list(range(int(oldest), minors[-1] + 1)), minors
    assert minors[-1] >= 13


def test_sdist_has_license_and_no_large_data(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        members = {m.name.split("/", 1)[1]: m.size for m in sdist.getmembers() if m.isfile()}
    assert "LICENSE" in members
    assert "tests/unit/test_smoke.py" in members  # the sdist can run the tests
    large = {name: size for name, size in members.items() if size > MAX_SDIST_FILE}
    assert not large, f"files over {MAX_SDIST_FILE} bytes in the sdist: {large}"
    assert not [name for name in members if name.endswith((".png", ".json")) and "docs" in name]


def test_wheel_installs_alone_and_imports_no_optional_dependency(
    dist: dict[str, Path], tmp_path: Path
) -> None:
    env = make_venv(tmp_path / "venv")
    python = str(tmp_path / "venv" / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(dist["wheel"])], env=env, check=True)
    probe = (
        "import sys, ws_guard, ws_guard.rules, ws_guard.load, ws_guard.client\n"
        "guard = ws_guard.Guard([ws_guard.rules.MaxMessageSize(1024)])\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL!r}))\n"
        "print(ws_guard.__version__, loaded)\n"
    )
    done = subprocess.run(
        [python, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [ws_guard.__version__, "[]"]


def test_version_is_written_once() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert not re.search(r"^version\s*=", pyproject, re.MULTILINE)
