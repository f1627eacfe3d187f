"""``JWTAuth``: one auth rule per guard, and shadow mode on the first-message bounds.

A guard's subject comes from one auth rule; two would each set it, the last
one winning, so a second rule that provides a subject is refused at
construction, naming both. With ``enforce=False`` the bounds on tokenless
connections waiting for a first-message token are reported (a shadow
breach) and the connection goes on as if there were room. In process.
"""

from __future__ import annotations

import json

import pytest

from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import OTHER_SECRET, SECRET, mint
from tests.support.rate_helpers import HeaderSubject
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


@pytest.mark.parametrize(
    "second",
    [rules.JWTAuth(OTHER_SECRET, algorithms=["HS256"]), HeaderSubject()],
)
def test_a_second_auth_rule_is_refused_naming_both(second: rules.Rule) -> None:
    first = rules.JWTAuth(SECRET, algorithms=["HS256"])
    with pytest.raises(ConfigurationError) as info:
        Guard(rules=[first, second])
    assert str(info.value) == (
        f"a guard takes one auth rule; {first!r} is given together with {second!r}"
    )
    assert SECRET not in str(info.value)


async def test_shadow_mode_reports_a_full_waiting_room_and_lets_the_client_wait() -> None:
    rule = rules.JWTAuth(
        SECRET,
        algorithms=["HS256"],
        token=rules.from_first_message(10.0, max_pending=5, max_pending_per_ip=1),
        enforce=False,
    )
    guard = Guard(rules=[rule])
    app = WSGuardMiddleware(whoami, guard=guard)
    clients = []
    for _ in range(2):  # the second is over max_pending_per_ip=1
        ws = ScriptedWebSocket(app)
        await ws.connect()
        await ws.expect("websocket.accept")
        clients.append(ws)
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"too_many_unauthenticated": 1}
    assert snap.closes_by_code == {}
    for ws in clients:  # both still wait for their token, and get in with it
        await ws.send_text(json.dumps({"token": mint("alice")}))
        await ws.send_text("ping")  # the app never sees the token message
        reply = await ws.expect("websocket.send")
        assert json.loads(reply["text"])["sub"] == "alice"
        await ws.disconnect()
        await ws.finished()
    assert guard.metrics.snapshot().closes_by_code == {1000: 2}
