"""A bounded cache of verified tokens, so a client that reconnects skips the signature check.

After a 1013 shed, a 1012 drain or a network blip, clients come back with
the token they used a moment ago; PyJWT's decode of an HS256 token is
about 214,000 instructions, more than the rest of a guarded handshake.
The cache keeps the claims of tokens that verified, keyed by the exact
token string, as Envoy's ``jwt_authn`` does (``jwt_cache_config``: off
unless configured, 100 entries when no size is given, only valid tokens,
at most 4 KiB each, time constraints checked again on every hit).

What a hit still checks, so that it answers as a decode would:

* ``exp`` and ``nbf``/``iat`` with the rule's leeway, on the guard's clock
  (``exp`` converted when the token was verified, as the session's
  deadline is): an expired token gets the rule's ``expired`` close, one not
  yet valid its ``invalid`` close, as PyJWT's checks give;
* the key: the entry names the key set it was verified under (a JWKS
  generation, ``0`` for a fixed key), and a hit under another set, or
  while the set is too old to be used, is a miss;
* revocation is not the cache's: the rule checks it after every verify.

Each hit hands out its own copy of the claims, so no connection sees
another's mutable state: a dict copy when no claim holds a list or an
object; else the claims parsed again from their JSON text, kept at the
miss (``json.loads`` costs about a tenth of ``copy.deepcopy`` here: with
~900 nested objects in a 4 KiB token a deep-copying hit cost 2.3 times a
full verification, a parsing one a sixth of it). Claims whose JSON does not
give them back equal (a ``decode`` of one's own that returns other types)
are deep-copied.
"""

from __future__ import annotations

import copy
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ws_guard._validate import check_number
from ws_guard.errors import ConfigurationError
from ws_guard.rules.auth.session import LATEST_EXPIRY

if TYPE_CHECKING:
    from ws_guard._core.decisions import Close
    from ws_guard.rules.auth.auth_rule import Claims

#: The longest token kept (bytes; a JWT is ASCII), as Envoy's cache: with
#: the size it bounds the memory held. A longer one is verified every time.
MAX_CACHED_TOKEN = 4096
_FOREVER = float("inf")
#: The largest ``verified_cache`` accepted: with 4 KiB tokens, about 0.5 GB.
MAX_ENTRIES = 100_000


def check_cache_size(size: object) -> int:
    """``verified_cache=``: an int from 0 (off) to :data:`MAX_ENTRIES`."""
    check_number("JWTAuth verified_cache", size, minimum=0, integer=True)
    if isinstance(size, bool) or not isinstance(size, int) or size > MAX_ENTRIES:
        raise ConfigurationError(
            f"JWTAuth verified_cache must be an int from 0 (off) to {MAX_ENTRIES}, not {size!r}"
        )
    return size


def _seconds(value: Any) -> float:
    """A time claim PyJWT accepted (``int(value)`` works), as a float a clock can compare."""
    return float(max(-LATEST_EXPIRY, min(int(value), LATEST_EXPIRY)))


def _as_json(claims: Claims) -> str | None:
    """*claims* as JSON text that ``json.loads`` turns back into equal claims, else ``None``."""
    try:
        text = json.dumps(claims)
    except (TypeError, ValueError, RecursionError):  # not JSON types: a decode of one's own
        return None
    return text if json.loads(text) == claims else None


class _Entry:
    __slots__ = ("claims", "expires_at", "generation", "nested", "text", "valid_from")

    def __init__(
        self,
        claims: Claims,
        nested: bool,
        text: str | None,
        generation: int,
        valid_from: float,
        expires_at: float,
    ) -> None:
        self.claims = claims
        self.nested = nested
        #: Nested claims as JSON, parsed again at each hit; None: deep-copied.
        self.text = text
        self.generation = generation
        self.valid_from = valid_from
        self.expires_at = expires_at


class VerifiedCache:
    """Claims of verified tokens, least recently used dropped first; *size* entries at most.

    Times are on :attr:`clock` (the guard's, set when the rule binds:
    ``time.monotonic`` or a test's ``ManualClock``), in seconds.
    """

    def __init__(self, size: int, *, leeway: float, expired: Close, invalid: Close) -> None:
        self.size = size
        self.leeway = leeway
        self.expired = expired
        self.invalid = invalid
        self.clock: Callable[[], float] = time.monotonic
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: Lookups answered from the cache and not (for tests and benchmarks).
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every token (the rule's checks changed)."""
        self._entries.clear()

    def get(self, token: str, generation: int) -> Claims | Close | None:
        """The claims (a copy) or the close for a cached *token*; ``None`` when not cached."""
        entry = self._entries.get(token)
        if entry is None or entry.generation != generation:
            self.misses += 1
            return None
        self.hits += 1
        now = self.clock()
        if now >= entry.expires_at:
            del self._entries[token]  # expired stays expired
            return self.expired
        if now < entry.valid_from:
            return self.invalid  # the guard's clock went back: as PyJWT's nbf/iat check
        self._entries.move_to_end(token)
        if not entry.nested:
            return dict(entry.claims)
        if entry.text is not None:
            parsed: Claims = json.loads(entry.text)
            return parsed
        return copy.deepcopy(entry.claims)

    def put(self, token: str, claims: Claims, generation: int) -> None:
        """Keep verified *claims* of *token*, verified under key set *generation*."""
        if len(token) > MAX_CACHED_TOKEN:
            return
        offset = self.clock() - time.time()  # wall-clock claims to the guard's clock
        leeway = self.leeway
        exp = claims.get("exp")
        expires_at = _FOREVER if exp is None else _seconds(exp) + leeway + offset
        valid_from = -_FOREVER
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None:
                valid_from = max(valid_from, _seconds(value) - leeway + offset)
        nested = False
        for value in claims.values():
            if isinstance(value, (dict, list)):
                nested = True
                break
        text = _as_json(claims) if nested else None
        kept: Claims = {}
        if not nested:
            kept = dict(claims)
        elif text is None:
            kept = copy.deepcopy(claims)
        entries = self._entries
        entries.pop(token, None)  # a token verified again goes to the end
        entries[token] = _Entry(kept, nested, text, generation, valid_from, expires_at)
        if len(entries) > self.size:
            entries.popitem(last=False)
