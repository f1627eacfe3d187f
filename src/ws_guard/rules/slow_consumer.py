"""``SlowConsumer``: close a client that does not read while the app sends to it.

Servers apply backpressure by making the app's ``send()`` wait while the
connection's write buffer is full (uvicorn's three WebSocket stacks and
hypercorn all do; measured in docs/servers.md, "Backpressure and slow
readers"). One client that stops reading then stalls the app's loop that
sends to it, a broadcast loop included. This rule bounds that wait: a send
pending longer than ``seconds`` closes the connection with 1008
``slow_consumer`` and the pending send returns (dropped, as every send after
a guard close is), so the app's loop moves on.

The engine does the timing (``_core/send_watch.py``): one deadline per
connection on the guard's shared heap that looks at the pending sends every
quarter of the limit, and no clock read per send; so a send is closed after
``seconds`` and at most a quarter of ``seconds`` later. The rule only decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ws_guard._core.decisions import Close
from ws_guard._validate import check_seconds
from ws_guard.codes import POLICY_VIOLATION, REASON_SLOW_CONSUMER
from ws_guard.rules.base import Rule

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext

#: Longest wait the rule accepts, seconds: past it a client is not slow but gone,
#: and a larger value is a unit mistake (milliseconds).
MAX_SECONDS = 600.0


class SlowConsumer(Rule):
    """Close with 1008 ``slow_consumer`` when an app send waits over ``seconds`` for the client.

    *seconds* (float, > 0, at most 600) is how long one ``send()`` may stay
    pending because the client does not read (closed within a quarter of
    *seconds* after that, never before). The pending send then returns
    without sending, counted in ``metrics.dropped_sends``; so do later ones.
    With ``enforce=False`` the first such wait of a connection is counted and
    logged once, and the send keeps waiting.

    Raises:
        ConfigurationError: *seconds* is not a positive number of at most 600.
    """

    def __init__(self, seconds: float, *, enforce: bool = True, name: str | None = None) -> None:
        seconds = check_seconds("SlowConsumer seconds", seconds, maximum=MAX_SECONDS)
        super().__init__(enforce=enforce, name=name)
        self.seconds = seconds
        self._breach = self.breach(POLICY_VIOLATION, REASON_SLOW_CONSUMER)

    def __repr__(self) -> str:
        return f"SlowConsumer({self.seconds!r}, name={self.name!r}, enforce={self.enforce!r})"

    def send_wait_limit(self) -> float:
        return self.seconds

    def send_waited(self, conn: RuleContext, waited: float) -> Close:
        return self._breach
