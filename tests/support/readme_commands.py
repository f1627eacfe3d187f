"""The README's two shell commands, read from README.md itself.

README.md promises that two commands do everything on a fresh machine: one
runs the example app, one installs and runs the tests. CI and the slow tests
run them as written, so the README cannot drift from what is checked.

    python tests/support/readme_commands.py test      # prints the test command
    python tests/support/readme_commands.py example   # prints the example command
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_commands(readme: Path = README) -> dict[str, str]:
    """``{"example": ..., "test": ...}``: the README's two ```sh blocks.

    Raises ``ValueError`` unless the README has exactly two one-line ```sh
    blocks, one running ``examples/app.py`` and one running ``pytest``.
    """
    blocks = [block.strip() for block in _SH_BLOCK.findall(readme.read_text(encoding="utf-8"))]
    if len(blocks) != 2 or any("\n" in block for block in blocks):
        raise ValueError(f"README.md must have exactly two one-line ```sh blocks, found {blocks!r}")
    found = {
        "example": [block for block in blocks if "examples/app.py" in block],
        "test": [block for block in blocks if "pytest" in block],
    }
    if any(len(hits) != 1 for hits in found.values()):
        raise ValueError(f"README.md's ```sh blocks must run the example and the tests: {blocks!r}")
    return {name: hits[0] for name, hits in found.items()}


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("example", "test"):
        sys.exit("usage: python tests/support/readme_commands.py example|test")
    print(readme_commands()[sys.argv[1]])
