"""Why a key lookup gave no key: a module of its own, so the auth session can
name the states without importing PyJWT (which :mod:`jwks` needs)."""

from __future__ import annotations

import enum


class KeyState(enum.Enum):
    """Why :meth:`JWKS.cached` / :meth:`JWKS.resolve` returned no key."""

    FETCH = "fetch"  # the answer needs a fetch (stale set, or unknown kid past cooldown)
    UNKNOWN = "unknown"  # the endpoint does not list this kid
    UNAVAILABLE = "unavailable"  # the endpoint could not be reached
