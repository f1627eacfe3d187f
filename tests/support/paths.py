"""Where the project's folders are, for tests that read files or start subprocesses.

A subprocess server imports its app as ``tests.support.<module>:app``, so its
``PYTHONPATH`` carries the project root (for the ``tests`` package) and ``src``
(for this checkout's ws_guard, ahead of any installed copy): :data:`SERVER_PATH`.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The project root: the folder of pyproject.toml, README.md, src/ and tests/.
ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
TESTS = ROOT / "tests"
#: ``PYTHONPATH`` for a subprocess that imports ws_guard and ``tests.support``.
SERVER_PATH = os.pathsep.join([str(SRC), str(ROOT)])
