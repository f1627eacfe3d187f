"""``AllowedOrigins``: refuse cross-site handshakes, else 1008 ``origin_not_allowed``.

Browsers send cookies with a WebSocket handshake that any page opens, and
WebSocket handshakes are not subject to CORS: cross-site WebSocket hijacking
(RFC 6455 section 10.2). What tells the server which page opened the socket
is the ``Origin`` header, which every browser sends on a WebSocket handshake
(RFC 6455 section 4.1, item 8) and which a page cannot forge.

Origins are compared as RFC 6454 section 4 defines them: scheme, host and
port, with scheme and host lower-cased and a scheme's default port the same
as no port (``https://a.example:443`` is ``https://a.example``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple, NoReturn

from ws_guard._core.decisions import Close
from ws_guard.codes import POLICY_VIOLATION, REASON_ORIGIN_NOT_ALLOWED
from ws_guard.errors import ConfigurationError
from ws_guard.rules.base import Rule, Stage

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext

logger = logging.getLogger("ws_guard")

#: The serialisation of an opaque origin (RFC 6454 section 6.2): sandboxed
#: iframes, ``file://`` pages, some redirects.
NULL = "null"
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}

# An Origin header value: scheme "://" host [ ":" port ], nothing else. Host
# is an IPv6 literal or dot-separated labels (browsers send ASCII, IDNs as
# punycode). ASCII classes only, so no Unicode digit or letter slips in.
_ORIGIN = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)
_WILDCARD = "*."
_MAX_LOGGED = 80  # characters of a refused Origin value in the DEBUG log


class Origin(NamedTuple):
    """A normalised tuple origin: lower-case scheme and host, ``None`` for the default port."""

    scheme: str
    host: str
    port: int | None


def parse_origin(value: str) -> Origin | None:
    """The origin in one ``Origin`` header value, or ``None`` when it is not one.

    ``None`` for ``null``, a list of origins (RFC 6454 section 7 allows a
    space-separated list; browsers send one), paths, user info, empty labels
    and ports outside 1-65535.
    """
    match = _ORIGIN.fullmatch(value)
    if match is None:
        return None
    scheme = match["scheme"].lower()
    port: int | None = None
    if match["port"] is not None:
        port = int(match["port"])
        if not 0 < port <= 65535:
            return None
        if DEFAULT_PORTS.get(scheme) == port:
            port = None
    return Origin(scheme, match["host"].lower(), port)


def _check_origin(entry: object) -> tuple[Origin, bool]:
    """One configured origin, and whether it is a ``*.`` wildcard; raises on a bad one."""
    if not isinstance(entry, str):
        raise ConfigurationError(f"AllowedOrigins entries must be strings, not {entry!r}")
    scheme, sep, rest = entry.partition("://")
    wildcard = rest.startswith(_WILDCARD)
    if wildcard:
        rest = rest[len(_WILDCARD) :]
    if not sep or not scheme:
        raise ConfigurationError(
            f"AllowedOrigins entry {entry!r} has no scheme; write it as it appears in the "
            f"Origin header, e.g. 'https://app.example.com'"
        )
    host, colon, port = rest.partition(":") if not rest.startswith("[") else (rest, "", "")
    try:  # a Unicode host in the configuration is compared in its punycode form
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise ConfigurationError(
            f"AllowedOrigins entry {entry!r} has a host that is not a valid domain name"
        ) from None
    parsed = parse_origin(f"{scheme}://{ascii_host}{colon}{port}")
    if parsed is None:
        raise ConfigurationError(
            f"AllowedOrigins entry {entry!r} is not an origin: write scheme://host[:port] "
            f"with no path, query or trailing slash (a '*.' wildcard may lead the host)"
        )
    if wildcard and (parsed.host.startswith("[") or "." not in parsed.host):
        raise ConfigurationError(
            f"AllowedOrigins wildcard {entry!r} must cover a domain of two or more labels, "
            f"such as 'https://*.example.com'"
        )
    return parsed, wildcard


def _refuse_every_site(entry: str) -> NoReturn:
    raise ConfigurationError(
        f"AllowedOrigins entry {entry!r} would admit every site, which is no origin check "
        f"at all; list your own origins"
    )


class AllowedOrigins(Rule):
    """Admit a handshake only from the listed origins (RFC 6455 section 10.2).

    ``origins`` are exact origins (``"https://app.example.com"``,
    ``"http://localhost:8000"``), wildcards that cover every subdomain of a
    domain but not the domain itself (``"https://*.example.com"``), or
    ``"null"`` to admit opaque origins (sandboxed iframes, ``file://``).
    ``allow_missing`` admits a handshake without an ``Origin`` header, which
    only non-browser clients send (default ``False``: see docs/auth.md).
    A handshake with several ``Origin`` lines is refused as malformed.

    Raises :class:`ConfigurationError` for an empty list, a bare ``*``, an
    entry without a scheme or with a path.
    """

    stage = Stage.ORIGIN
    checks_origin = True

    def __init__(
        self,
        origins: Iterable[str],
        *,
        allow_missing: bool = False,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(enforce=enforce, name=name)
        if origins == "*":
            _refuse_every_site(origins)
        if isinstance(origins, str) or not isinstance(origins, Iterable):
            raise ConfigurationError(
                f"AllowedOrigins takes a list of origins, not {origins!r}; "
                f"write AllowedOrigins([{origins!r}]) for one"
            )
        entries = tuple(origins)
        if not entries:
            raise ConfigurationError(
                "AllowedOrigins needs at least one origin; an empty list refuses every browser"
            )
        exact: set[Origin] = set()
        suffixes: list[tuple[str, str, int | None]] = []
        self.allow_null = False
        for entry in entries:
            if entry in ("*", "*://*"):
                _refuse_every_site(entry)
            if entry == NULL:
                self.allow_null = True
                continue
            origin, wildcard = _check_origin(entry)
            if wildcard:
                suffixes.append((origin.scheme, "." + origin.host, origin.port))
            else:
                exact.add(origin)
        if not isinstance(allow_missing, bool):
            raise ConfigurationError(
                f"AllowedOrigins allow_missing must be True or False, not {allow_missing!r}"
            )
        self.origins = entries
        self.allow_missing = allow_missing
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)
        self._refusal = self.breach(POLICY_VIOLATION, REASON_ORIGIN_NOT_ALLOWED)

    def __repr__(self) -> str:
        return (
            f"AllowedOrigins({list(self.origins)!r}, allow_missing={self.allow_missing!r}, "
            f"enforce={self.enforce!r}, name={self.name!r})"
        )

    def allows(self, value: str | None) -> bool:
        """Whether an ``Origin`` header value (``None``: no header) is admitted."""
        if value is None:
            return self.allow_missing
        value = value.strip(" \t")
        if value == NULL:
            return self.allow_null
        origin = parse_origin(value)
        if origin is None:
            return False
        if origin in self._exact:
            return True
        scheme, host, port = origin
        for s_scheme, suffix, s_port in self._suffixes:
            # Labels are never empty (parse_origin), so a match has one before the suffix.
            if scheme == s_scheme and port == s_port and host.endswith(suffix):
                return True
        return False

    async def admit(self, conn: RuleContext) -> Close | None:
        value: str | None = None
        for key, raw in conn.scope.get("headers", ()):
            if key.lower() == b"origin":
                if value is not None:  # which line would a browser have meant? Neither.
                    return self._refuse("several Origin header lines")
                value = raw.decode("latin-1")
        if self.allows(value):
            return None
        return self._refuse("no Origin header" if value is None else repr(value[:_MAX_LOGGED]))

    def _refuse(self, what: str) -> Close:
        logger.debug("ws_guard origin check refused %s", what)
        return self._refusal
