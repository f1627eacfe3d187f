"""A ``rate.warning`` reaches a flooding client before its 1008, on real uvicorn.

The client is a raw socket that writes its whole burst in one ``sendall``:
the server reads every frame at once, and the app's ``receive()`` returns
them one after another without the event loop running in between, so the
guard refuses the message past the limit in the same loop turn in which
the warning was due. The warning must still come first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from tests.support.apps import echo
from tests.support.raw_frames import frames_to_close, masked_text
from tests.support.servers import UVICORN_WS, serve
from tests.support.slow_reader import stalled_client
from ws_guard import Guard, WSGuardMiddleware, rules

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler"),
]

BURST = [f"m{i}" for i in range(1, 8)]  # two bytes each


@pytest.mark.parametrize("kind", UVICORN_WS)
@pytest.mark.parametrize(
    "make_rule",
    [
        lambda: rules.MessageRate("4/minute", warn_at=0.5),  # m2 warns, m5 is refused
        lambda: rules.ByteRate("8/minute", warn_at=0.5),  # 4 bytes warn, 10 are refused
    ],
    ids=["message_rate", "byte_rate"],
)
def test_a_burst_in_one_write_reads_the_warning_then_the_close(
    kind: str, make_rule: Callable[[], rules.Rule]
) -> None:
    guard = Guard(rules=[make_rule()])
    with serve(WSGuardMiddleware(echo, guard=guard), kind) as server:
        sock = stalled_client(server.port)
        try:
            sock.sendall(b"".join(masked_text(text) for text in BURST))
            texts, close = frames_to_close(sock)
        finally:
            sock.close()
    warnings = [text for text in texts if text.startswith("{")]
    assert len(warnings) == 1, texts
    assert re.fullmatch(r"(59|60)", str(json.loads(warnings[0])["retry_after"]))
    assert json.loads(warnings[0])["type"] == "rate.warning"
    assert json.loads(warnings[0])["rule"] == "rate_limited"
    # The echoes in order, the warning somewhere after the threshold's
    # message, and the close last: nothing is sent after it.
    assert [text for text in texts if text not in warnings] == BURST[:4]
    assert texts.index(warnings[0]) >= 2
    assert close is not None
    assert close[0] == 1008
    assert re.fullmatch(r"rate_limited; retry-after=(59|60)", close[1])
    assert guard.metrics.snapshot().closes_by_rule == {"rate_limited": 1}
