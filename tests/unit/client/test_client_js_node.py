"""examples/static/reconnect.js under node: the shared policy table, quickly.

The same table runs in headless Chromium in test_client_browser.py; node
gives a fast answer without a browser.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.reconnect_cases import CASES_PATH, check_js_results
from tests.support.services import require_binary

ROOT = Path(__file__).resolve().parents[3]
MODULE = ROOT / "examples" / "static" / "reconnect.js"
RUNNER = ROOT / "tests" / "js" / "policy_cases.mjs"


def test_reconnect_js_policy_table_in_node() -> None:
    node = require_binary("node", apt_package="nodejs")
    script = (
        f"import * as lib from {json.dumps(MODULE.as_uri())};"
        f"import {{ runCases }} from {json.dumps(RUNNER.as_uri())};"
        "import { readFileSync } from 'node:fs';"
        f"const table = JSON.parse(readFileSync({json.dumps(str(CASES_PATH))}, 'utf8'));"
        "console.log(JSON.stringify(runCases(lib, table)));"
    )
    out = subprocess.run(
        [node, "--input-type=module", "-e", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    check_js_results(json.loads(out.stdout))
