"""Signing keys from a JWKS endpoint, fetched off the loop and kept on it.

PyJWKClient does the HTTP (http/https only, no redirects), the JSON and the
key parsing; its fetch blocks, so it runs in a thread. The parsed keys are
kept here, on the event loop, so a handshake whose ``kid`` is known never
leaves the loop, and an in-band refresh can look its key up synchronously.
The freshness rules are PyJWKClient's, applied on the loop so that a burst
of tokens with unknown ``kid`` values costs no thread hops:

* the key set is refetched when it is older than ``lifespan``;
* an unknown ``kid`` triggers one refetch, at most once per ``cooldown``,
  then the token is invalid;
* after a failed fetch, no new attempt for ``retry`` seconds; failures are
  counted and logged through ``guard.report_storage_error``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import anyio.to_thread
from jwt import PyJWK, PyJWKClient
from jwt.exceptions import PyJWKClientError, PyJWKError, PyJWKSetError

from ws_guard._core.tasks import Job, spawn, wait_done
from ws_guard._validate import check_clock, check_seconds
from ws_guard.errors import ConfigurationError
from ws_guard.rules.auth.key_state import KeyState

if TYPE_CHECKING:
    from ws_guard.rules.runtime import Runtime


class JWKS:
    """A JWKS endpoint for :class:`JWTAuth` (``jwks_url=JWKS(url, ...)`` to tune it)."""

    def __init__(
        self,
        url: str,
        *,
        lifespan: float = 300.0,
        cooldown: float = 30.0,
        timeout: float = 5.0,
        retry: float = 5.0,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise ConfigurationError(f"jwks_url must be an http:// or https:// URL, not {url!r}")
        self.url = url
        # A key set kept past a day misses a rotation that revokes a key.
        self.lifespan = check_seconds("JWKS lifespan", lifespan, maximum=86400.0)
        self.cooldown = check_seconds("JWKS cooldown", cooldown, maximum=3600.0, positive=False)
        self.timeout = check_seconds("JWKS timeout", timeout, maximum=60.0)
        self.retry = check_seconds("JWKS retry", retry, maximum=600.0, positive=False)
        self._clock = check_clock(clock) or time.monotonic
        # No cache inside the client: the loop-side dict below is the cache.
        self.client = PyJWKClient(
            url, cache_jwk_set=False, timeout=self.timeout, headers=dict(headers or {})
        )
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._failed_at = -math.inf
        self._inflight: Job[bool] | None = None
        #: Successful fetches so far: the number of the key set in use.
        self._generation = 0
        #: Successful and failed fetches, for tests and metrics.
        self.fetches = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"JWKS({self.url!r}, lifespan={self.lifespan}, cooldown={self.cooldown})"

    @property
    def kids(self) -> frozenset[str]:
        """The key ids currently known."""
        return frozenset(self._keys)

    @property
    def generation(self) -> int | None:
        """The number of the key set in use, or ``None`` when there is none fresh enough.

        A new set (every successful fetch) has a new number, so what was
        verified under the old one (rules/auth/verified_cache.py) is not
        taken as verified under it: a key dropped from the set takes its
        tokens with it. ``None`` before the first fetch and once the set is
        older than ``lifespan``, when every token must wait for a fetch.
        """
        fetched = self._fetched_at
        if fetched is None or self._clock() - fetched >= self.lifespan:
            return None
        return self._generation

    def cached(self, kid: object) -> PyJWK | KeyState:
        """The key for *kid* without I/O, or why there is none yet."""
        if not isinstance(kid, str):
            return KeyState.UNKNOWN  # no kid: the endpoint's keys are all named
        fetched = self._fetched_at
        if fetched is None:
            return KeyState.FETCH
        age = self._clock() - fetched
        if age >= self.lifespan:
            return KeyState.FETCH
        key = self._keys.get(kid)
        if key is not None:
            return key
        return KeyState.UNKNOWN if age < self.cooldown else KeyState.FETCH

    async def resolve(self, kid: object, guard: Runtime) -> PyJWK | KeyState:
        """The key for *kid*, fetching when :meth:`cached` says so.

        When the fetch fails, a key from the last good set is still used if
        the guard's policy is ``on_storage_error="allow"`` (stale keys beat
        no keys); otherwise the answer is ``UNAVAILABLE``.
        """
        found = self.cached(kid)
        if found is not KeyState.FETCH:
            return found
        if self._clock() - self._failed_at >= self.retry and await self.refresh(guard):
            found = self.cached(kid)
            return KeyState.UNKNOWN if found is KeyState.FETCH else found
        stale = self._keys.get(kid) if isinstance(kid, str) else None
        if stale is not None and guard.on_storage_error == "allow":
            return stale
        return KeyState.UNAVAILABLE

    async def refresh(self, guard: Runtime) -> bool:
        """Fetch the key set now (one fetch shared by concurrent callers)."""
        inflight = self._inflight
        if inflight is None or inflight.done():
            # Done yet still here: cancelled before its first step, so its
            # ``finally`` never ran (asyncio); it must not stand for a fetch.
            # Detached: a cancelled caller stops waiting, the fetch goes on for the others.
            inflight = self._inflight = spawn(self._fetch(guard))
        await wait_done(inflight)  # never cancels the fetch for the other waiters
        if inflight.cancelled():
            return False  # cut short (its loop is ending): no keys, not the waiter's cancel
        return inflight.result()

    async def _fetch(self, guard: Runtime) -> bool:
        try:
            keys = await anyio.to_thread.run_sync(self.client.get_signing_keys, True)
        except (PyJWKClientError, PyJWKSetError, PyJWKError, ValueError, OSError) as exc:
            # Unreachable, an HTTP error, not JSON, or no usable signing key.
            self.failures += 1
            self._failed_at = self._clock()
            guard.report_storage_error(exc, "jwks fetch")
            return False
        finally:
            self._inflight = None
        self.fetches += 1
        self._generation += 1
        self._keys = {key.key_id: key for key in keys if key.key_id}
        self._fetched_at = self._clock()
        return True
