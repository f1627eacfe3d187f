"""Checks for a JWT rule's algorithms and key, done once at construction.

Every check here closes a known hole (RFC 8725): ``alg: none``; algorithm
confusion, where an RSA public key is used as an HMAC secret; HMAC secrets
shorter than the hash (RFC 7518 section 3.2); keys that cannot verify the
algorithms they are configured for. Secrets never appear in the messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jwt import PyJWK
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError

from ws_guard.errors import ConfigurationError

_ALGORITHMS = {name: alg for name, alg in get_default_algorithms().items() if name != "none"}
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})


def check_algorithms(algorithms: object) -> tuple[str, ...]:
    """A non-empty list of known algorithms, all HMAC or all asymmetric."""
    if isinstance(algorithms, str) or not isinstance(algorithms, Iterable):
        raise ConfigurationError(
            f"JWTAuth algorithms must be a list such as ['HS256'], not {algorithms!r}"
        )
    names = tuple(algorithms)
    if not names:
        raise ConfigurationError(
            "JWTAuth needs algorithms=[...]: the accepted algorithms are never read from the token"
        )
    for name in names:
        if isinstance(name, str) and name.lower() == "none":
            raise ConfigurationError(f"JWTAuth algorithm {name!r} accepts unsigned tokens")
        if name not in _ALGORITHMS:
            raise ConfigurationError(
                f"JWTAuth algorithm {name!r} is not one of {sorted(_ALGORITHMS)}"
            )
    hmac = [name for name in names if name in HMAC_ALGORITHMS]
    if hmac and len(hmac) != len(names):
        raise ConfigurationError(
            f"JWTAuth algorithms {list(names)!r} mix HMAC and public-key algorithms; "
            "one key cannot serve both safely (algorithm confusion)"
        )
    return names


def describe_key(key: object) -> str:
    """What a key is, without its value."""
    if isinstance(key, (str, bytes)):
        return f"a {type(key).__name__} of {len(key)} characters"
    return f"a {type(key).__name__}"


def prepare_key(key: object, algorithms: tuple[str, ...]) -> Any:
    """The key parsed once, checked against every algorithm it must verify.

    Private keys are reduced to their public half: verification needs no more.
    """
    if isinstance(key, PyJWK):
        mismatched = [name for name in algorithms if name != key.algorithm_name]
        if mismatched:
            raise ConfigurationError(
                f"JWTAuth key is a JWK for {key.algorithm_name!r}, it cannot verify {mismatched!r}"
            )
        key = key.key
    if key is None or key == "" or key == b"":
        raise ConfigurationError("JWTAuth needs a key (or jwks_url=...), not an empty value")
    prepared: Any = None
    for name in algorithms:
        algorithm = _ALGORITHMS[name]
        try:
            prepared = algorithm.prepare_key(key)
        except (InvalidKeyError, ValueError, TypeError) as exc:
            kind = "an HMAC secret" if name in HMAC_ALGORITHMS else "a public or private key"
            raise ConfigurationError(
                f"JWTAuth key ({describe_key(key)}) cannot verify {name}: {name} needs {kind} "
                f"({type(exc).__name__}: {exc})"
            ) from None
        public_key = getattr(prepared, "public_key", None)
        if callable(public_key):
            prepared = public_key()
        short = algorithm.check_key_length(prepared)
        if short:
            raise ConfigurationError(f"JWTAuth key is too short for {name}: {short}")
    return prepared


def check_required_claims(require: object, require_exp: object) -> tuple[str, ...]:
    """The claims a token must carry: ``exp`` first, then *require*, without repeats.

    PyJWT admits a token with no ``exp`` unless told to require it, and such
    a token never expires; so ``exp`` is required whatever *require* lists,
    unless ``require_exp=False`` says otherwise in so many words.
    """
    if not isinstance(require_exp, bool):
        raise ConfigurationError(f"JWTAuth require_exp must be True or False, not {require_exp!r}")
    if isinstance(require, (str, bytes)) or not isinstance(require, Iterable):
        raise ConfigurationError(f"JWTAuth require must be a list of claim names, not {require!r}")
    claims = tuple(require)
    if not all(isinstance(c, str) and c for c in claims):
        raise ConfigurationError(f"JWTAuth require must be a list of claim names, not {require!r}")
    if not require_exp and "exp" in claims:
        raise ConfigurationError(
            f"JWTAuth require={list(claims)!r} lists 'exp' while require_exp=False drops it"
        )
    return tuple(dict.fromkeys((("exp",) if require_exp else ()) + claims))


def check_strings(what: str, value: object) -> tuple[str, ...] | None:
    """``None``, one string, or a list of strings (audience, issuer)."""
    if value is None:
        return None
    values = (value,) if isinstance(value, str) else value
    if not isinstance(values, Iterable):
        raise ConfigurationError(
            f"JWTAuth {what} must be a string or a list of strings, not {value!r}"
        )
    checked = tuple(values)
    if not checked or not all(isinstance(v, str) and v for v in checked):
        raise ConfigurationError(
            f"JWTAuth {what} must be a string or a list of strings, not {value!r}"
        )
    return checked
