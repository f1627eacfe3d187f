"""The runtime: what rules and load gauges may use of the guard that holds them.

A rule's ``bind``, ``startup`` and ``shutdown`` and a gauge's ``bind``,
``startup`` and ``shutdown`` receive a :class:`Runtime`, never the
:class:`ws_guard.Guard` itself, so a rule written outside ws_guard depends on
this page only. A ``Guard`` is one: it passes itself. Everything here is
read-only for a rule; ws_guard owns the objects behind it.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ws_guard._core.bans import Bans
    from ws_guard._core.revocations import Revocations
    from ws_guard._core.scheduler import Scheduler
    from ws_guard._core.storage import SharedStorage
    from ws_guard.metrics.snapshot import Metrics


class RuleTraits(Protocol):
    """What a rule may read of the guard's other rules (:class:`ws_guard.rules.Rule` has it all).

    For configuration checks across rules at ``bind``: one auth rule per guard,
    cookie auth only with an origin check, ``by_user`` keys only with an auth rule.
    """

    @property
    def stage(self) -> int:
        """The rule's admission stage (``Stage``)."""

    @property
    def provides_subject(self) -> bool:
        """True for a rule that sets the connection's subject (an auth rule)."""

    @property
    def checks_origin(self) -> bool:
        """True for a rule that checks the ``Origin`` header."""

    @property
    def enforce(self) -> bool:
        """False for a rule in shadow mode."""

    @property
    def name(self) -> str | None:
        """The rule's metrics label, or ``None``."""


class Runtime(Protocol):
    """The guard's shared runtime as rules and gauges see it.

    Attributes (all read-only):

    - ``rules``: every rule of the guard, in the user's order (for checks
      across rules at :meth:`Rule.bind`);
    - ``scheduler``: the guard's clock (``scheduler.clock()``, seconds,
      injectable) and its single deadline heap (``call_at``/``call_later``);
      ``scheduler.manual`` is True when tests drive the clock;
    - ``random``: the guard's random source (jitter of retry hints);
    - ``storage``: the shared ``limits`` storage, opened by ``startup``;
      ``storage.errors`` are the exceptions that mean "unavailable";
    - ``namespace``: the prefix of every storage key this guard writes;
    - ``ipv6_prefix``: the network size (bits) that ``by_ip`` keys an IPv6
      client by;
    - ``on_storage_error``: ``"allow"`` (fail open) or ``"deny"``;
    - ``metrics``: the guard's counters;
    - ``live_connections``: the admitted connections that have not finished;
    - ``revocations``: revoked token ids and subjects (``revoked(jti, sub)``,
      a dict lookup; the auth rule asks at the handshake and on refresh);
    - ``ban_store``: keys banned by ``AutoBan`` (``remaining(rule, key)``,
      ``ban(rule, key, ends, shadow=...)``);
    - ``started``: whether ``startup`` ran in the running event loop.
    """

    @property
    def rules(self) -> tuple[RuleTraits, ...]: ...

    @property
    def scheduler(self) -> Scheduler: ...

    @property
    def random(self) -> random.Random: ...

    @property
    def storage(self) -> SharedStorage: ...

    @property
    def namespace(self) -> str: ...

    @property
    def ipv6_prefix(self) -> int: ...

    @property
    def on_storage_error(self) -> str: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def live_connections(self) -> Collection[Any]: ...

    @property
    def revocations(self) -> Revocations: ...

    @property
    def ban_store(self) -> Bans: ...

    @property
    def started(self) -> bool: ...

    def report_storage_error(self, exc: BaseException, what: str) -> bool:
        """Count and (throttled) log a failed storage or key-server call.

        *what* names the call in the log (``"connect rate"``). Returns True
        when ``on_storage_error`` allows (fail open); the caller applies it.
        """
        ...
