"""JWT authentication: verify at the handshake, close at expiry, refresh in band.

Signatures are checked at the handshake, on the first message (when that is
the token source) and on an in-band refresh, never per message: PyJWT costs
34-95 us a call here, more than a whole echo round trip. Live expiry is one
deadline per connection on the guard's shared heap (one timer handle for
all connections), so an idle authenticated socket costs no wake-ups. A
refresh is rate-limited before its signature is checked (``refresh_rate``,
and the connection's ``MessageRate`` rules), so a flood of them costs no crypto.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import jwt
from jwt.exceptions import ExpiredSignatureError, PyJWTError

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
    REASON_TOKEN_STALE,
    REASON_TOO_MANY_UNAUTHENTICATED,
    TRY_AGAIN_LATER,
)
from ws_guard.errors import ConfigurationError
from ws_guard.rules.auth.jwks import JWKS
from ws_guard.rules.auth.jwt_settings import (
    check_algorithms,
    check_required_claims,
    check_strings,
    prepare_key,
)
from ws_guard.rules.auth.key_state import KeyState
from ws_guard.rules.auth.session import Claims, Outcome, RefreshMatcher, Session, refresh_matcher
from ws_guard.rules.auth.tokens import (
    FromCookie,
    FromFirstMessage,
    FromSubprotocol,
    TokenSource,
    check_sources,
)
from ws_guard.rules.auth.waiting_room import Full, WaitingRoom
from ws_guard.rules.base import Rule, Stage
from ws_guard.rules.context import Checker
from ws_guard.rules.fast import AuthCheck, refresh_needle
from ws_guard.rules.keys import by_ip, by_user
from ws_guard.rules.limits.rates import Rate, parse_rates
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import RuleTraits, Runtime

logger = logging.getLogger("ws_guard")

#: What decoding a hostile token may raise. PyJWT wraps most failures in its
#: own errors; older releases let ``RecursionError`` (a deeply nested header)
#: and ``ValueError`` (``UnicodeEncodeError`` for a non-ASCII token) through.
_DECODE_ERRORS = (PyJWTError, ValueError, RecursionError)
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
    current token's closes 1008 ``token_stale``.
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
        self.jwks: JWKS | None = None
        self._key: Any = None
        if jwks_url is not None:
            if key is not None:
                raise ConfigurationError("JWTAuth takes a key or jwks_url=..., not both")
            if any(alg.startswith("HS") for alg in self.algorithms):
                raise ConfigurationError(
                    f"JWTAuth with jwks_url verifies public-key algorithms only, "
                    f"not {list(self.algorithms)!r}"
                )
            self.jwks = jwks_url if isinstance(jwks_url, JWKS) else JWKS(jwks_url)
        else:
            self._key = prepare_key(key, self.algorithms)
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
        self._pyjwt = jwt.PyJWT({"require": list(self.require), "enforce_minimum_key_length": True})
        self._audience_arg = (
            None
            if self.audience is None
            else (self.audience[0] if len(self.audience) == 1 else list(self.audience))
        )
        self._issuer_arg = (
            None
            if self.issuer is None
            else (self.issuer[0] if len(self.issuer) == 1 else self.issuer)
        )
        self.missing = self.breach(POLICY_VIOLATION, REASON_TOKEN_MISSING)
        self.invalid = self.breach(POLICY_VIOLATION, REASON_TOKEN_INVALID)
        self.expired = self.breach(POLICY_VIOLATION, REASON_TOKEN_EXPIRED)
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
        """Claims of a verified *token*, or the close it earns."""
        try:
            claims: Claims = self._pyjwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self._audience_arg,
                issuer=self._issuer_arg,
                leeway=self.leeway,
            )
        except ExpiredSignatureError:
            return self.expired
        except _DECODE_ERRORS as exc:
            logger.debug("ws_guard rejected a token: %s", type(exc).__name__)
            return self.invalid
        return claims

    def verify_now(self, token: str) -> Outcome:
        """Verify without I/O; ``KeyState.FETCH`` when a JWKS fetch must come first."""
        # A JWT is ASCII (base64url and dots, RFC 7519 section 3); anything
        # else, such as a lone surrogate a JSON envelope can carry, is refused
        # before PyJWT encodes it.
        if not token or len(token) > self.max_token_bytes or not token.isascii():
            return self.invalid
        jwks = self.jwks
        if jwks is None:
            return self.decode(token, self._key)
        try:
            header = jwt.get_unverified_header(token)
        except _DECODE_ERRORS:
            return self.invalid
        found = jwks.cached(header.get("kid"))
        if found is KeyState.FETCH:
            return found
        if isinstance(found, KeyState):
            return self.invalid
        return self.decode(token, found)

    async def verify(self, token: str, guard: Runtime) -> Outcome:
        """Verify, fetching JWKS keys off the loop when needed."""
        outcome = self.verify_now(token)
        if outcome is not KeyState.FETCH or self.jwks is None:
            return outcome
        found = await self.jwks.resolve(jwt.get_unverified_header(token).get("kid"), guard)
        if found is KeyState.UNAVAILABLE:
            return found
        if isinstance(found, KeyState):
            return self.invalid
        return self.decode(token, found)

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
        others = [r for r in guard.rules if r.provides_subject and r is not self]
        if others:
            raise ConfigurationError(
                f"a guard takes one auth rule; {self!r} is given together with {others[0]!r}"
            )
        self._check_cookie_origin(guard.rules)
        self._check_user_keys_at_handshake(guard.rules)

    def _check_cookie_origin(self, rules: Sequence[RuleTraits]) -> None:
        """Raise when a token may come from a cookie and no rule checks origins.

        A browser attaches cookies to a handshake any page opens, so cookie auth
        without an origin check admits every site the user visits (cross-site
        WebSocket hijacking).
        """
        if any(rule.checks_origin for rule in rules):
            return
        cookies = [s for s in self.sources if isinstance(s, FromCookie)]
        if cookies:
            raise ConfigurationError(
                f"{self!r} reads a token from a cookie ({cookies[0]!r}), which a browser sends "
                f"on a handshake any site opens (cross-site WebSocket hijacking); add "
                f"rules.AllowedOrigins(['https://your.site']) to the guard's rules"
            )

    def _check_user_keys_at_handshake(self, rules: Sequence[RuleTraits]) -> None:
        """Raise when a handshake rule keys by user but the token may arrive after the handshake.

        ``MaxConnectionsPerKey`` and ``ConnectRate`` decide at the handshake; with
        ``rules.from_first_message`` there is no subject yet, so ``by_user`` gives
        no key and the rule would let every such connection through: a client
        could dodge its cap by sending its token in the first message instead.
        """
        if self.first_message is None:
            return
        for rule in rules:
            if getattr(rule, "key", None) is by_user and rule.stage in (
                Stage.CONNECT_RATE,
                Stage.CONNECTION_CAP,
            ):
                raise ConfigurationError(
                    f"{rule!r} keys by user at the handshake, but {self!r} may take the "
                    "token from the first message, after the handshake, when there is no user "
                    "yet to count: a client could escape the rule that way. Key it by "
                    "rules.by_ip, or take tokens only at the handshake"
                )

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

    async def release(self, conn: RuleContext) -> None:
        session: Session | None = conn.extra.pop(self, None)
        if session is not None:
            session.disarm()
            session.stop_waiting()
