"""JWT authentication: verify at the handshake, close at expiry, refresh in band.

The rule's hooks, from the handshake to the connection's end. Its settings
are checked in rules/auth/jwt_settings.py, tokens verified in
rules/auth/verifier.py (never per message: PyJWT costs 34-95 us a call), and
each connection's deadlines and in-band messages kept in rules/auth/session.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from ws_guard._core.decisions import Close, Consume
from ws_guard._validate import check_number, check_seconds
from ws_guard.codes import (
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    REASON_INTERNAL_ERROR,
    REASON_OVERLOADED,
    REASON_REFRESH_RATE_LIMITED,
    REASON_STORAGE_UNAVAILABLE,
    REASON_TOKEN_EXPIRED,
    REASON_TOKEN_INVALID,
    REASON_TOKEN_MISSING,
    REASON_TOKEN_REVOKED,
    REASON_TOKEN_STALE,
    REASON_TOO_MANY_UNAUTHENTICATED,
    TRY_AGAIN_LATER,
)
from ws_guard.errors import ConfigurationError
from ws_guard.rules.auth.first_message import FromFirstMessage
from ws_guard.rules.auth.jwt_settings import (
    check_algorithms,
    check_cookie_origin,
    check_keys,
    check_one_auth_rule,
    check_required_claims,
    check_sources,
    check_strings,
    check_user_keys_at_handshake,
)
from ws_guard.rules.auth.key_state import KeyState
from ws_guard.rules.auth.refresh_matcher import RefreshMatcher, refresh_matcher
from ws_guard.rules.auth.session import Session
from ws_guard.rules.auth.tokens import FromSubprotocol, TokenSource
from ws_guard.rules.auth.verified_cache import check_cache_size
from ws_guard.rules.auth.verifier import Verifier
from ws_guard.rules.auth.waiting_room import Full, WaitingRoom
from ws_guard.rules.base import Rule, Stage
from ws_guard.rules.context import Checker
from ws_guard.rules.fast import AuthCheck, refresh_needle
from ws_guard.rules.keys import by_ip, by_user
from ws_guard.rules.limits.rates import Rate, parse_rates
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard.rules.auth.auth_rule import Claims, Outcome
    from ws_guard.rules.auth.jwks import JWKS
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

logger = logging.getLogger("ws_guard")

#: A client refreshes about once per token lifetime; three a minute per
#: connection leaves room for tokens of 20 s and bounds the crypto a client
#: can make the server do (ES256: ~95 us a refresh).
DEFAULT_REFRESH_RATE = "3/minute"


class JWTAuth(Rule):
    """Admit a WebSocket only with a valid JWT, and close it when the JWT expires.

    Closes with 1008 ``token_missing`` / ``token_invalid`` / ``token_expired``
    (and 1013 ``storage_unavailable`` when a JWKS endpoint is down and the
    guard's ``on_storage_error`` is ``"deny"``). The verified ``sub`` becomes
    the connection's subject (``rules.by_user`` keys on it with ``iss``); the
    claims are readable by the app at ``scope["ws_guard"].claims``.

    An in-band refresh past ``refresh_rate`` (per connection, limits syntax,
    default ``"3/minute"``) closes with
    1008 ``refresh_rate_limited; retry-after=<seconds>``; refreshes also
    count as messages in every ``MessageRate``. A verified refresh for
    another ``(iss, sub)``, or on a connection whose token had no ``sub``,
    closes 1008 ``token_invalid``; one whose ``exp`` is not later than the
    current token's closes 1008 ``token_stale``. A token whose ``jti`` or
    ``sub`` was revoked (``guard.revoke()``) is refused at the handshake and
    on refresh with 1008 ``token_revoked``.

    ``verified_cache=N`` (off by default, as Envoy's ``jwt_cache_config``)
    keeps the claims of up to N verified tokens of at most 4 KiB, so a
    client that reconnects with the same token skips the signature check;
    every hit still checks ``exp``/``nbf`` on the guard's clock, and
    revocation (see rules/auth/verified_cache.py).
    """

    stage = Stage.AUTH
    provides_subject = True

    def __init__(
        self,
        key: Any = None,
        *,
        algorithms: Iterable[str] | None = None,
        token: TokenSource | Iterable[TokenSource] | None = None,
        audience: str | Iterable[str] | None = None,
        issuer: str | Iterable[str] | None = None,
        leeway: float = 0.0,
        require: Iterable[str] = (),
        require_exp: bool = True,
        jwks_url: str | JWKS | None = None,
        refresh: str | RefreshMatcher | None = "auth.refresh",
        refresh_field: str = "token",
        refresh_rate: str | Sequence[str] = DEFAULT_REFRESH_RATE,
        expiring_notice: float | None = None,
        max_token_bytes: int = 8192,
        verified_cache: int = 0,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(enforce=enforce, name=name)
        if algorithms is None:
            raise ConfigurationError(
                "JWTAuth needs algorithms=[...], e.g. ['HS256'] or ['RS256']: "
                "they are never read from the token"
            )
        self.algorithms = check_algorithms(algorithms)
        prepared, self.jwks = check_keys(key, jwks_url, self.algorithms)
        self.sources = check_sources(token)
        self.first_message = next(
            (s for s in self.sources if isinstance(s, FromFirstMessage)), None
        )
        first = self.first_message
        #: Tokenless connections waiting for a first message (see rules/auth/waiting_room.py).
        self.waiting = (
            None if first is None else WaitingRoom(first.max_pending, first.max_pending_per_ip)
        )
        self.subprotocol = next((s for s in self.sources if isinstance(s, FromSubprotocol)), None)
        self._handshake_sources = tuple(s for s in self.sources if not s.deferred)
        self.audience = check_strings("audience", audience)
        self.issuer = check_strings("issuer", issuer)
        # Leeway accepts expired tokens for that long; past the 5 minutes
        # commonly allowed for clock skew it outlives the tokens themselves.
        self.leeway = check_seconds("JWTAuth leeway", leeway, maximum=300.0, positive=False)
        self.require_exp = require_exp
        self.require = check_required_claims(require, require_exp)
        if not require_exp:
            logger.warning(
                "ws_guard JWTAuth(require_exp=False): a token without exp is admitted "
                "and never expires"
            )
        check_number("JWTAuth max_token_bytes", max_token_bytes, minimum=256, integer=True)
        self.max_token_bytes = max_token_bytes
        self.refresh = refresh
        self.refresh_field = refresh_field
        #: The built-in refresh message's type as it appears in JSON: a message
        #: without it is not a refresh, decided by one substring test.
        self.refresh_needle = refresh_needle(refresh) if isinstance(refresh, str) else None
        self.refresh_token = refresh_matcher(refresh, refresh_field, max_token_bytes)
        try:
            #: Refreshes per connection, counted before their signature is checked.
            self.refresh_rates: tuple[Rate, ...] = parse_rates(refresh_rate)
        except ConfigurationError as exc:
            raise ConfigurationError(f"JWTAuth refresh_rate: {exc}") from None
        self.expiring_notice = (
            None
            if expiring_notice is None
            else check_seconds("JWTAuth expiring_notice", expiring_notice, maximum=3600.0)
        )
        self.missing = self.breach(POLICY_VIOLATION, REASON_TOKEN_MISSING)
        self.invalid = self.breach(POLICY_VIOLATION, REASON_TOKEN_INVALID)
        self.expired = self.breach(POLICY_VIOLATION, REASON_TOKEN_EXPIRED)
        #: A verified token whose jti or sub was revoked (``guard.revoke()``).
        self.revoked = self.breach(POLICY_VIOLATION, REASON_TOKEN_REVOKED)
        self.unavailable = self.breach(TRY_AGAIN_LATER, REASON_STORAGE_UNAVAILABLE)
        #: A verified refresh whose exp does not move the deadline forward.
        self.stale = self.breach(POLICY_VIOLATION, REASON_TOKEN_STALE)
        #: A refresh matcher of the user's own raised: a bug in it, not the client's fault.
        self.failed = self.breach(INTERNAL_ERROR, REASON_INTERNAL_ERROR)
        # Too many tokenless connections waiting: one client's (1008), or the
        # process's (1013, retry once the current ones have timed out).
        self.pending_per_ip = self.breach(POLICY_VIOLATION, REASON_TOO_MANY_UNAUTHENTICATED)
        self.pending_full = Close(
            TRY_AGAIN_LATER,
            REASON_OVERLOADED,
            name or "pending_auth",
            None if first is None else first.timeout,
            not enforce,
        )
        self.verifier = Verifier(
            algorithms=self.algorithms,
            key=prepared,
            jwks=self.jwks,
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
            require=self.require,
            max_token_bytes=max_token_bytes,
            invalid=self.invalid,
            expired=self.expired,
            cache_size=check_cache_size(verified_cache),
        )

    def __repr__(self) -> str:
        keys = f"jwks_url={self.jwks.url!r}" if self.jwks else "key=<hidden>"
        no_exp = "" if self.require_exp else ", require_exp=False"
        return (
            f"JWTAuth({keys}, algorithms={list(self.algorithms)!r}, token={list(self.sources)!r}"
            f"{no_exp}, enforce={self.enforce!r})"
        )

    def refresh_limited(self, retry: float) -> Close:
        """The close for a refresh past ``refresh_rate``; *retry* in seconds."""
        return self.breach(POLICY_VIOLATION, REASON_REFRESH_RATE_LIMITED, retry)

    # -- verification ---------------------------------------------------------
    def decode(self, token: str, key: Any) -> Claims | Close:
        """Claims of a verified *token*, or the close it earns (:meth:`Verifier.decode`)."""
        return self.verifier.decode(token, key)

    def verify_now(self, token: str) -> Outcome:
        """Verify without I/O; ``KeyState.FETCH`` when a JWKS fetch must come first."""
        return self.verifier.verify_now(token, self.decode)

    async def verify(self, token: str, guard: Runtime) -> Outcome:
        """Verify, fetching JWKS keys off the loop when needed."""
        return await self.verifier.verify(token, guard, self.decode)

    def handshake_close(self, outcome: KeyState, guard: Runtime) -> Close:
        """The close for a token that could not be checked because keys are unreachable.

        Auth cannot fail open: with ``on_storage_error="allow"`` the token is
        treated as signed by an unknown key (``token_invalid``); with
        ``"deny"`` the client is told to come back later (1013).
        """
        return self.invalid if guard.on_storage_error == "allow" else self.unavailable

    # -- hooks ----------------------------------------------------------------
    async def startup(self, guard: Runtime) -> None:
        if self.jwks is not None:
            await self.jwks.refresh(guard)  # a failure is counted, logged, and retried later

    def bind(self, guard: Runtime) -> None:
        check_one_auth_rule(self, guard.rules)
        cache = self.verifier.cache
        if cache is not None:
            cache.clock = guard.scheduler.clock  # hits check exp on the guard's clock
            cache.clear()
        check_cookie_origin(self, self.sources, guard.rules)
        check_user_keys_at_handshake(self, self.first_message, guard.rules)
        if "sub" not in self.require and any(
            getattr(rule, "key", None) is by_user for rule in guard.rules
        ):
            # A token without sub has no user to count: it would escape
            # every by_user cap and rate. Refuse it (1008 token_invalid).
            self.require += ("sub",)
            self.verifier.require_claims(self.require)

    def on_connect(self, conn: RuleContext) -> None:
        session = Session(self, conn)
        for source in self._handshake_sources:
            token = source.take(conn)  # every source redacts its own token
            if token is not None and session.token is None:
                session.token = token
        if self.subprotocol is not None:
            session.marker = self.subprotocol.offered(conn)
        conn.extra[self] = session

    async def admit(self, conn: RuleContext) -> Close | None:
        session: Session | None = conn.extra.get(self)
        if session is None:
            self.on_connect(conn)
            session = conn.extra[self]
        token, session.token = session.token, None  # held no longer than needed
        if token is None:
            if self.first_message is None:
                return self.missing
            return self._wait_for_first_message(session, conn)
        outcome = await self.verify(token, conn.guard)
        if isinstance(outcome, KeyState):
            return self.handshake_close(outcome, conn.guard)
        if isinstance(outcome, Close):
            return outcome
        refusal = await session.handshake_revocation(outcome)
        if refusal is not None:
            return refusal
        session.apply(outcome)
        return None

    def _wait_for_first_message(self, session: Session, conn: RuleContext) -> Close | None:
        """Admit a tokenless connection to wait for its token, within the bounds."""
        waiting = cast(WaitingRoom, self.waiting)
        key = by_ip(conn)
        full = waiting.full(key)
        refusal = None
        if full is not None:
            refusal = self.pending_per_ip if full is Full.KEY else self.pending_full
            if not refusal.shadow:
                return refusal
        session.wait(key)
        if self.enforce:  # shadow mode changes nothing the client sees
            conn.hold_until_verified()
        return refusal  # None, or a shadow breach to count

    def checker(self, conn: RuleContext) -> Checker | None:
        every, marked = self._checks(conn)
        if marked is None:
            return every
        needle = self.refresh_needle

        def check(message: Message) -> Close | Consume | None:
            # Every message passes here: most are not refreshes, and one
            # substring test says so without a call into the session.
            text = message.get("text")
            if text is None or needle not in text:
                return None
            return marked(message)

        return check

    def fast_check(self) -> AuthCheck:
        return AuthCheck(self.refresh_needle, self._checks)

    def _checks(self, conn: RuleContext) -> tuple[Checker | None, Checker | None]:
        """``(every, marked)``: the session's check for every message, or only
        for text containing the refresh needle (see :class:`AuthCheck`)."""
        session: Session | None = conn.extra.get(self)
        if session is None or not (session.pending or self.refresh_token is not None):
            return None, None
        if session.pending or self.refresh_needle is None:
            return session.check, None  # a first-message token, or the user's own matcher
        return None, session.check

    def on_accept(self, conn: RuleContext, message: Message) -> None:
        session: Session | None = conn.extra.get(self)
        if session is None or not session.marker or self.subprotocol is None:
            return
        chosen = message.get("subprotocol")
        if chosen is None or chosen not in (conn.scope.get("subprotocols") or ()):
            message["subprotocol"] = self.subprotocol.marker  # never the token

    def on_open(self, conn: RuleContext) -> None:
        session: Session | None = conn.extra.get(self)
        if session is not None:
            session.start()

    #: release() only disarms the session's timers and leaves the waiting room.
    release_suspends = False

    async def release(self, conn: RuleContext) -> None:
        session: Session | None = conn.extra.pop(self, None)
        if session is not None:
            session.disarm()
            session.stop_waiting()
