"""Token verification with PyJWT: signature, algorithms and claims, keys fixed or from JWKS.

Called at the handshake, on a first-message token and on an in-band
refresh, never per message: PyJWT costs 34-95 us a call here, more than a
whole echo round trip. A token whose key must first be fetched gives
``KeyState.FETCH`` from :meth:`Verifier.verify_now`, so a synchronous
caller can hand it to :meth:`Verifier.verify`, which fetches off the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt
from jwt.algorithms import HMACAlgorithm
from jwt.api_jws import PyJWS
from jwt.exceptions import ExpiredSignatureError, PyJWTError

from ws_guard.rules.auth.key_state import KeyState
from ws_guard.rules.auth.verified_cache import VerifiedCache

if TYPE_CHECKING:
    from ws_guard._core.decisions import Close
    from ws_guard.rules.auth.auth_rule import Claims, Outcome
    from ws_guard.rules.auth.jwks import JWKS
    from ws_guard.rules.runtime import Runtime

logger = logging.getLogger("ws_guard")

#: Checks a token against one key: the rule's ``decode``, passed in at each
#: call so that a wrapper of it (a subclass, a test counting signature
#: checks) sees every check.
Decode = Callable[[str, Any], "Claims | Close"]

#: What decoding a hostile token may raise. PyJWT wraps most failures in its
#: own errors; older releases let ``RecursionError`` (a deeply nested header)
#: and ``ValueError`` (``UnicodeEncodeError`` for a non-ASCII token) through.
_DECODE_ERRORS = (PyJWTError, ValueError, RecursionError)

#: The HMAC algorithms by name, with their hash (PyJWT's own table).
_HMAC_HASHES = {
    "HS256": HMACAlgorithm.SHA256,
    "HS384": HMACAlgorithm.SHA384,
    "HS512": HMACAlgorithm.SHA512,
}


class _PreparedHMAC(HMACAlgorithm):
    """PyJWT's HMAC algorithm, taking the rule's own key as already prepared.

    PyJWT prepares the key again at every decode (PEM, SSH and DER probes
    and a JSON parse: about 18 us here, a quarter of an HS256 verification).
    The rule's key was prepared, and so checked, once at construction
    (``jwt_settings.prepare_key``); that very object passes straight
    through, any other key is prepared as PyJWT always does.
    """

    def __init__(self, hash_alg: Any, prepared: bytes) -> None:
        super().__init__(hash_alg)
        self._prepared = prepared

    def prepare_key(self, key: str | bytes) -> bytes:
        if key is self._prepared:
            return self._prepared
        return super().prepare_key(key)


class Verifier:
    """Verifies one rule's tokens: claims, or the rule's ``invalid``/``expired`` close.

    Takes settings already checked (rules/auth/jwt_settings.py): ``key`` is
    the prepared key, or ``None`` with ``jwks``; ``leeway`` in seconds.
    """

    def __init__(
        self,
        *,
        algorithms: tuple[str, ...],
        key: Any,
        jwks: JWKS | None,
        audience: tuple[str, ...] | None,
        issuer: tuple[str, ...] | None,
        leeway: float,
        require: tuple[str, ...],
        max_token_bytes: int,
        invalid: Close,
        expired: Close,
        cache_size: int = 0,
    ) -> None:
        self.algorithms = algorithms
        self._key = key
        self.jwks = jwks
        self.leeway = leeway
        self.max_token_bytes = max_token_bytes
        self.invalid = invalid
        self.expired = expired
        #: Verified tokens (rules/auth/verified_cache.py); None when off.
        self.cache = (
            VerifiedCache(cache_size, leeway=leeway, expired=expired, invalid=invalid)
            if cache_size
            else None
        )
        self.require_claims(require)
        # PyJWT takes one audience or issuer as a string, several as a sequence.
        self._audience = (
            None if audience is None else (audience[0] if len(audience) == 1 else list(audience))
        )
        self._issuer = None if issuer is None else (issuer[0] if len(issuer) == 1 else issuer)

    def require_claims(self, require: tuple[str, ...]) -> None:
        """Refuse tokens without any of *require* (PyJWT's ``require`` option)."""
        self._pyjwt = jwt.PyJWT({"require": list(require), "enforce_minimum_key_length": True})
        self._reuse_prepared_hmac_key()
        if self.cache is not None:
            self.cache.clear()  # verified under the old requirements

    def _reuse_prepared_hmac_key(self) -> None:
        """Let PyJWT take the rule's HMAC key as prepared (:class:`_PreparedHMAC`).

        Reaches PyJWT's own ``PyJWS`` (``_jws``, not public API): where a
        PyJWT release has none, it keeps preparing the key every time.
        """
        jws = getattr(self._pyjwt, "_jws", None)
        key = self._key
        if not isinstance(jws, PyJWS) or not isinstance(key, bytes):
            return
        for name in self.algorithms:
            hash_alg = _HMAC_HASHES.get(name)
            if hash_alg is not None:
                jws.unregister_algorithm(name)
                jws.register_algorithm(name, _PreparedHMAC(hash_alg, key))

    def decode(self, token: str, key: Any) -> Claims | Close:
        """Claims of a verified *token*, or the close it earns."""
        try:
            claims: Claims = self._pyjwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self.leeway,
            )
        except ExpiredSignatureError:
            return self.expired
        except _DECODE_ERRORS as exc:
            logger.debug("ws_guard rejected a token: %s", type(exc).__name__)
            return self.invalid
        return claims

    def verify_now(self, token: str, decode: Decode) -> Outcome:
        """Verify without I/O; ``KeyState.FETCH`` when a JWKS fetch must come first."""
        # A JWT is ASCII (base64url and dots, RFC 7519 section 3); anything
        # else, such as a lone surrogate a JSON envelope can carry, is refused
        # before PyJWT encodes it.
        if not token or len(token) > self.max_token_bytes or not token.isascii():
            return self.invalid
        jwks = self.jwks
        cache = self.cache
        if cache is not None:
            # A JWKS key set that is too old to use has no generation: every
            # token goes through the key lookup, which fetches the set again.
            generation = 0 if jwks is None else jwks.generation
            if generation is not None:
                cached = cache.get(token, generation)
                if cached is not None:
                    return cached
        if jwks is None:
            return self._decoded(token, self._key, decode)
        try:
            header = jwt.get_unverified_header(token)
        except _DECODE_ERRORS:
            return self.invalid
        found = jwks.cached(header.get("kid"))
        if found is KeyState.FETCH:
            return found
        if isinstance(found, KeyState):
            return self.invalid
        return self._decoded(token, found, decode)

    def _decoded(self, token: str, key: Any, decode: Decode) -> Claims | Close:
        """``decode(token, key)``; verified claims are kept in the cache, if on.

        Kept under the key set in use now: with JWKS, a key from a set too
        old to use (a stale key, ``on_storage_error="allow"``) is not kept.
        """
        outcome = decode(token, key)
        cache = self.cache
        if cache is not None and isinstance(outcome, dict):
            generation = 0 if self.jwks is None else self.jwks.generation
            if generation is not None:
                cache.put(token, outcome, generation)
        return outcome

    async def verify(self, token: str, guard: Runtime, decode: Decode) -> Outcome:
        """Verify, fetching JWKS keys off the loop when needed."""
        outcome = self.verify_now(token, decode)
        if outcome is not KeyState.FETCH or self.jwks is None:
            return outcome
        found = await self.jwks.resolve(jwt.get_unverified_header(token).get("kid"), guard)
        if found is KeyState.UNAVAILABLE:
            return found
        if isinstance(found, KeyState):
            return self.invalid
        return self._decoded(token, found, decode)
