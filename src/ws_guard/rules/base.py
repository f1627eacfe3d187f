"""The base every rule builds on, and the hooks the connection calls.

A rule overrides only the hooks it needs; the guard looks at which ones are
overridden once, at construction, so a connection never calls a no-op.
Hooks return decisions (``Close``, ``CONSUME`` or ``None``); they never raise
for a client's behaviour.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar

from ws_guard._core.decisions import Close
from ws_guard.errors import ConfigurationError
from ws_guard.rules.context import Checker
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard._core.batch import Pending
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.fast import FastCheck
    from ws_guard.rules.runtime import Runtime


class Stage(enum.IntEnum):
    """Admission order, cheapest and most protective first.

    Message checks run in the same order, so an auth rule can consume an
    in-band token before size, type or content rules see it.
    """

    #: ``AutoBan``: one lookup, and a banned key must cost nothing more.
    BAN = 1
    #: ``AllowedOrigins``: pure and cheapest, and a hostile page's attempts
    #: must not spend its victim's connect-rate budget.
    ORIGIN = 5
    CONNECT_RATE = 10
    AUTH = 20
    #: ``ConnectRate`` with a per-tier rate: its callable reads the verified claims.
    TIERED_CONNECT_RATE = 25
    CONNECTION_CAP = 30
    CUSTOM = 40


class Rule:
    """Base class for rules. Subclasses override the hooks they need.

    * :meth:`on_connect` runs first on every handshake, even one a gauge or an
      earlier rule then rejects (for scope edits such as redacting a token).
    * :meth:`admit` runs once per handshake, before the app sees the connection.
    * :meth:`checker` returns a per-connection function called on every
      client message; it must be plain arithmetic (no I/O, no await).
    * :meth:`on_accept` may edit the app's ``websocket.accept`` message.
    * :meth:`release` runs once when an admitted connection ends, on every path.
    """

    stage: ClassVar[Stage] = Stage.CUSTOM
    #: True for rules that set ``conn.subject`` (JWT auth); ``by_user`` needs one.
    provides_subject: ClassVar[bool] = False
    #: True for rules that admit a handshake only from allowed origins
    #: (``AllowedOrigins``); cookie auth needs one (see ``JWTAuth.bind``).
    checks_origin: ClassVar[bool] = False
    #: Whether :meth:`release` may suspend (storage I/O). False only when it
    #: never awaits anything that suspends: a connection whose held rules all
    #: say False ends without a shielding cancel scope, which no await that
    #: cannot suspend needs (and which costs a fifth of a handshake).
    release_suspends: ClassVar[bool] = True

    def __init__(self, *, enforce: bool = True, name: str | None = None) -> None:
        if not isinstance(enforce, bool):
            raise ConfigurationError(f"enforce must be True or False, not {enforce!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"rule name must be a non-empty string, not {name!r}")
        self.enforce = enforce
        #: Metrics/log label; ``None`` labels each close by its reason slug.
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, enforce={self.enforce!r})"

    # -- construction ------------------------------------------------------
    def bind(self, guard: Runtime) -> None:
        """Check this rule against the rest of the guard's configuration.

        Runs once, when the guard is built, in the order of its ``rules``;
        *guard* is the guard's :class:`~ws_guard.rules.Runtime` and
        ``guard.rules`` every rule of it. Raise ``ConfigurationError`` for a
        combination that cannot work: the guard only asks each rule.
        """

    # -- lifespan ----------------------------------------------------------
    async def startup(self, guard: Runtime) -> None:
        """Create loop-bound resources (storage, clients). Runs in the loop."""

    async def shutdown(self, guard: Runtime) -> None:
        """Release what :meth:`startup` created."""

    # -- per connection ----------------------------------------------------
    def on_connect(self, conn: RuleContext) -> None:
        """Runs at ``websocket.connect`` before any admission decision; sync, cheap.

        The place to take secrets out of the scope (a query-string token) so
        neither the server's access log nor the app sees them, whatever the
        handshake's outcome.
        """

    async def admit(self, conn: RuleContext) -> Close | None:
        """Decide on a handshake; ``None`` admits."""
        return None

    def prepare(self, conn: RuleContext) -> Pending | None:
        """:meth:`admit` as one Redis call admission sends with the handshake's others.

        Sync: the rule's work before its call (tier, key), and the call with
        what decides from its reply (see :mod:`ws_guard._core.batch`).
        ``None``: this handshake goes through :meth:`admit` (memory storage,
        or a rare state the rule handles there), so ``None`` must be
        returned before anything :meth:`admit` would do again.
        """
        return None

    def checker(self, conn: RuleContext) -> Checker | None:
        """The message check for *conn*, or ``None`` when this rule has none."""
        return None

    def fast_check(self) -> FastCheck | None:
        """This rule's message check as data the fast path runs, or ``None``.

        Only for a check that is one of the shapes in :mod:`ws_guard.rules.fast`
        and decides exactly as :meth:`checker` does; the engine then runs it
        with its neighbours in one call. A subclass that overrides
        :meth:`checker` is checked on its own.
        """
        return None

    def on_accept(self, conn: RuleContext, message: Message) -> None:
        """Edit an accept message in place (e.g. choose a subprotocol).

        Runs on the app's accept and on the accept ws_guard sends itself
        before a close, so a browser that offered subprotocols gets a valid
        handshake and can read the close code.
        """

    def on_open(self, conn: RuleContext) -> None:
        """The app accepted; schedule deadlines here."""

    async def release(self, conn: RuleContext) -> None:
        """Give back what :meth:`admit` took (connection slots)."""

    def on_close(self, conn: RuleContext, close: Close) -> None:
        """A guard decision (a rule's or gauge's, not shadow) closed or refused *conn*.

        Sync and cheap: it runs inside the close's bookkeeping, once per
        counted close, also for a refusal at the handshake. ``AutoBan``
        counts policy closes here.
        """

    def send_wait_limit(self) -> float:
        """Seconds an app's ``send()`` may wait for the client before :meth:`send_waited`.

        Read once, when the guard is built, and only from a rule that
        overrides :meth:`send_waited`; a guard without one leaves the send
        path as it is.
        """
        return float("inf")

    def send_waited(self, conn: RuleContext, waited: float) -> Close | None:
        """The app's pending send has waited *waited* seconds (>= the limit); the decision.

        Sync and cheap, like a deadline callback. A close (not shadow) also
        ends the pending send: it returns as a dropped send.
        """
        return None

    # -- helpers -----------------------------------------------------------
    def breach(self, code: int, reason: str, retry_after: float | None = None) -> Close:
        """A close decision labelled with this rule, shadow when not enforcing.

        The label is the rule's ``name`` if one was given, else the reason slug,
        so ``closes_by_rule`` reads ``{"rate_limited": 2, "token_expired": 1}``.
        """
        return Close(code, reason, self.name or reason, retry_after, not self.enforce)


def overrides(rule: object, hook: str) -> bool:
    """True when *rule*'s class replaces ``Rule.<hook>``."""
    return getattr(type(rule), hook, None) is not getattr(Rule, hook)
