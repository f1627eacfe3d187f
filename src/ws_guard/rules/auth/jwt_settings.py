"""Checks of a JWT rule's configuration: at construction, and across rules at ``bind``.

The algorithm and key checks each close a known hole (RFC 8725): ``alg:
none``; algorithm confusion, where an RSA public key is used as an HMAC
secret; HMAC secrets shorter than the hash (RFC 7518 section 3.2); keys that
cannot verify the algorithms they are configured for. Secrets never appear
in the messages. The checks across rules refuse a guard whose other rules a
token source would defeat (cookie auth without an origin check, per-user
handshake limits with a first-message token).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from jwt import PyJWK
from jwt.algorithms import get_default_algorithms
from jwt.exceptions import InvalidKeyError

from ws_guard.errors import ConfigurationError
from ws_guard.rules.auth.first_message import FromFirstMessage
from ws_guard.rules.auth.jwks import JWKS
from ws_guard.rules.auth.tokens import FromCookie, FromSubprotocol, TokenSource, from_header
from ws_guard.rules.base import Stage
from ws_guard.rules.keys import by_user

if TYPE_CHECKING:
    from ws_guard.rules.runtime import RuleTraits

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


def check_keys(
    key: object, jwks_url: str | JWKS | None, algorithms: tuple[str, ...]
) -> tuple[Any, JWKS | None]:
    """``(prepared key, None)`` for a fixed key, ``(None, JWKS)`` for ``jwks_url``."""
    if jwks_url is None:
        return prepare_key(key, algorithms), None
    if key is not None:
        raise ConfigurationError("JWTAuth takes a key or jwks_url=..., not both")
    if any(alg.startswith("HS") for alg in algorithms):
        raise ConfigurationError(
            f"JWTAuth with jwks_url verifies public-key algorithms only, not {list(algorithms)!r}"
        )
    return None, (jwks_url if isinstance(jwks_url, JWKS) else JWKS(jwks_url))


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


def check_sources(token: TokenSource | Iterable[TokenSource] | None) -> tuple[TokenSource, ...]:
    """The rule's sources: one or a list, at most one of each in-band kind."""
    if token is None:
        return (from_header(),)
    sources = (token,) if isinstance(token, TokenSource) else token
    if not isinstance(sources, Iterable):
        raise ConfigurationError(f"JWTAuth token must be a token source or a list, not {token!r}")
    checked = tuple(sources)
    if not checked or not all(isinstance(s, TokenSource) for s in checked):
        raise ConfigurationError(
            f"JWTAuth token must be rules.from_query/from_header/from_cookie/"
            f"from_subprotocol/from_first_message sources, not {token!r}"
        )
    if sum(1 for s in checked if isinstance(s, FromFirstMessage)) > 1:
        raise ConfigurationError("JWTAuth takes at most one from_first_message source")
    if sum(1 for s in checked if isinstance(s, FromSubprotocol)) > 1:
        raise ConfigurationError("JWTAuth takes at most one from_subprotocol source")
    return checked


def check_one_auth_rule(rule: object, rules: Sequence[RuleTraits]) -> None:
    """Raise when a rule other than *rule* also sets the connection's subject."""
    others = [other for other in rules if other.provides_subject and other is not rule]
    if others:
        raise ConfigurationError(
            f"a guard takes one auth rule; {rule!r} is given together with {others[0]!r}"
        )


def check_cookie_origin(
    rule: object, sources: Sequence[TokenSource], rules: Sequence[RuleTraits]
) -> None:
    """Raise when *rule* may take a token from a cookie and no rule checks origins.

    A browser attaches cookies to a handshake any page opens, so cookie auth
    without an origin check admits every site the user visits (cross-site
    WebSocket hijacking).
    """
    if any(other.checks_origin for other in rules):
        return
    cookies = [s for s in sources if isinstance(s, FromCookie)]
    if cookies:
        raise ConfigurationError(
            f"{rule!r} reads a token from a cookie ({cookies[0]!r}), which a browser sends "
            f"on a handshake any site opens (cross-site WebSocket hijacking); add "
            f"rules.AllowedOrigins(['https://your.site']) to the guard's rules"
        )


def check_user_keys_at_handshake(
    rule: object, first_message: FromFirstMessage | None, rules: Sequence[RuleTraits]
) -> None:
    """Raise when a handshake rule keys by user but the token may arrive after the handshake.

    ``MaxConnectionsPerKey`` and ``ConnectRate`` decide at the handshake; with
    ``rules.from_first_message`` there is no subject yet, so ``by_user`` gives
    no key and the rule would let every such connection through: a client
    could dodge its cap by sending its token in the first message instead.
    """
    if first_message is None:
        return
    for other in rules:
        if getattr(other, "key", None) is by_user and other.stage in (
            Stage.CONNECT_RATE,
            Stage.CONNECTION_CAP,
        ):
            raise ConfigurationError(
                f"{other!r} keys by user at the handshake, but {rule!r} may take the "
                "token from the first message, after the handshake, when there is no user "
                "yet to count: a client could escape the rule that way. Key it by "
                "rules.by_ip, or take tokens only at the handshake"
            )
