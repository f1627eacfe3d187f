"""Where a client's token comes from at the handshake: query, header, cookie, subprotocol.

Handshake sources *take* their token at ``websocket.connect``, before any
admission decision, and take it out of the scope where a server or an app
might print it: uvicorn's access log line (``"WebSocket /ws?token=..."
[accepted]``) reads ``scope["query_string"]`` when the accept goes out, so a
query token is overwritten in place; a subprotocol token is dropped from
``scope["subprotocols"]`` so the app cannot echo it back as its choice.
Each source also edits its header copies (``redact=True``, see rules/auth/redaction.py).
The first-message source, which waits for the token after the accept, is in
rules/auth/first_message.py.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

from ws_guard._core.request import field_lines, join_field
from ws_guard.errors import ConfigurationError
from ws_guard.rules.auth.redaction import (
    check_redact,
    latin1,
    query_key_is,
    redact_header,
    redact_raw_path,
    redacted_pair,
    remove_cookie,
    remove_subprotocol,
)

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext

#: What a source takes from a request that carries a token it must not read
#: (two Authorization lines): not ``None``, so no later source is asked, and
#: empty, so verification refuses it as ``token_invalid``.
INVALID_TOKEN = ""
# RFC 7230 "token": what a Sec-WebSocket-Protocol value may be.
_HTTP_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _field_lines(conn: RuleContext, name: bytes) -> list[str]:
    """Every line of header *name* (lower-case bytes), read straight from the scope.

    Not through ``conn.header``, whose cache would keep every header (the
    token among them) for the connection's whole life.
    """
    return field_lines(conn.scope.get("headers", ()), name)


def _single(values: list[str]) -> str | None:
    """The one token a request carries under a name given once or more.

    The same value repeated is that value; different values make the token
    invalid: ws_guard would verify one while the app (Starlette's
    ``query_params`` keeps the last) or a cookie jar might read another.
    """
    first = values[0]
    # Most requests carry the name once: no generator to start for one value.
    if len(values) > 1 and values.count(first) != len(values):
        return INVALID_TOKEN
    return first or None


def check_name(what: str, name: object) -> str:
    """*name* when it is a non-empty string; raises ``ConfigurationError`` naming *what*."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"{what} needs a non-empty name, not {name!r}")
    return name


class TokenSource:
    """Base of the token sources; :attr:`deferred` ones wait for a message."""

    deferred = False

    def take(self, conn: RuleContext) -> str | None:
        """The handshake's token, or ``None``; also redacts it from the scope."""
        return None

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class FromQuery(TokenSource):
    """``?<name>=<token>``. Redacted in the scope (``<name>=redacted``) unless ``redact=False``."""

    def __init__(self, name: str = "token", *, redact: bool = True) -> None:
        self.name = check_name("from_query", name)
        self.redact = check_redact("from_query", redact)
        self._raw_name = latin1(self.name)

    def take(self, conn: RuleContext) -> str | None:
        """Every value of the parameter, read and redacted in one pass over the query.

        The values are those ``parse_qsl(query.decode("latin-1"),
        keep_blank_values=True)`` gives for the name (``+`` and
        ``%``-escapes undone, UTF-8), without splitting and decoding the
        parameters the source does not read.
        """
        scope = conn.scope
        raw: bytes = scope.get("query_string", b"")
        if not raw:
            return None
        name, raw_name = self.name, self._raw_name
        parts = raw.split(b"&")
        values: list[str] = []
        for i, part in enumerate(parts):
            key, _, value = part.partition(b"=")
            if not query_key_is(key, name, raw_name):
                continue
            text = value.decode("latin-1")
            values.append(unquote_plus(text) if b"%" in value or b"+" in value else text)
            if self.redact:
                parts[i] = redacted_pair(key)
        if not values:
            return None
        if self.redact:
            scope["query_string"] = b"&".join(parts)
            redact_raw_path(scope, name)
        return _single(values)


class FromHeader(TokenSource):
    """A request header, ``Authorization: Bearer <token>`` by default.

    With ``scheme=None`` the whole header value is the token. A header with
    another scheme (``Basic ...``) counts as no token, so later sources run.
    """

    def __init__(
        self, name: str = "authorization", *, scheme: str | None = "Bearer", redact: bool = True
    ) -> None:
        self.name = check_name("from_header", name).lower()
        self.redact = check_redact("from_header", redact)
        self._raw_name = self.name.encode("latin-1")
        if scheme is not None and (
            not isinstance(scheme, str) or not _HTTP_TOKEN.fullmatch(scheme)
        ):
            raise ConfigurationError(
                f"from_header scheme must be a word like 'Bearer', not {scheme!r}"
            )
        self.scheme = scheme

    def take(self, conn: RuleContext) -> str | None:
        token = self._find(conn)
        if self.redact:  # every line with the scheme, not only the one read
            redact_header(conn.scope, self._raw_name, self.scheme)
        return token

    def _find(self, conn: RuleContext) -> str | None:
        lines = _field_lines(conn, self._raw_name)
        if not lines:
            return None
        if len(lines) > 1:
            # A credential field is a singleton (RFC 9110 sections 5.3 and
            # 11.6.2): two lines make the request invalid. Picking one would
            # let the client choose which a proxy or the app reads.
            return INVALID_TOKEN
        value = lines[0]
        if self.scheme is None:
            return value.strip() or None
        parts = value.split(None, 1)
        if len(parts) != 2 or parts[0].lower() != self.scheme.lower():
            return None
        return parts[1].strip() or None


class FromCookie(TokenSource):
    """A cookie, ``Cookie: <name>=<token>``.

    Parsed by hand: ``http.cookies.SimpleCookie`` drops every cookie of a
    header after one malformed pair, which browsers send happily.
    """

    def __init__(self, name: str, *, redact: bool = True) -> None:
        self.name = check_name("from_cookie", name)
        self.redact = check_redact("from_cookie", redact)

    def take(self, conn: RuleContext) -> str | None:
        token = self._find(conn)
        if self.redact:  # every pair of that name, on every Cookie line
            remove_cookie(conn.scope, self.name)
        return token

    def _find(self, conn: RuleContext) -> str | None:
        header = join_field("cookie", _field_lines(conn, b"cookie"))
        if not header:
            return None
        values = []
        for pair in header.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == self.name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                values.append(value)
        return _single(values) if values else None


class FromSubprotocol(TokenSource):
    """``Sec-WebSocket-Protocol: <marker>, <token>``: the one header a browser can set.

    The token is the entry after the marker. It is removed from
    ``scope["subprotocols"]``, and the accept names the marker as the chosen
    subprotocol (browsers fail a handshake that picks none), never the token.
    """

    def __init__(self, marker: str = "access_token", *, redact: bool = True) -> None:
        if not isinstance(marker, str) or not _HTTP_TOKEN.fullmatch(marker):
            raise ConfigurationError(
                f"from_subprotocol marker must be an HTTP token such as 'access_token', "
                f"not {marker!r}"
            )
        self.marker = marker
        self.redact = check_redact("from_subprotocol", redact)

    def offered(self, conn: RuleContext) -> bool:
        return self.marker in (conn.scope.get("subprotocols") or ())

    def take(self, conn: RuleContext) -> str | None:
        token = self._find(conn)
        if token is not None and self.redact and token != self.marker:
            remove_subprotocol(conn.scope, token)  # the header line and any second copy
        return token

    def _find(self, conn: RuleContext) -> str | None:
        offered = list(conn.scope.get("subprotocols") or ())
        if self.marker not in offered:
            return None
        index = offered.index(self.marker)
        if index + 1 >= len(offered):
            return None
        token = offered[index + 1]
        conn.scope["subprotocols"] = [p for i, p in enumerate(offered) if i != index + 1]
        return token or None


def from_query(name: str = "token", *, redact: bool = True) -> FromQuery:
    """The token in query parameter *name* (redacted from the scope by default)."""
    return FromQuery(name, redact=redact)


def from_header(
    name: str = "authorization", *, scheme: str | None = "Bearer", redact: bool = True
) -> FromHeader:
    """The token in header *name*, after ``scheme`` (``Bearer``) unless ``scheme=None``.

    The app sees ``<scheme> redacted`` unless ``redact=False``.
    """
    return FromHeader(name, scheme=scheme, redact=redact)


def from_cookie(name: str, *, redact: bool = True) -> FromCookie:
    """The token in cookie *name*, removed from the ``Cookie`` header unless ``redact=False``.

    Needs ``rules.AllowedOrigins`` in the same guard (cross-site WebSocket hijacking).
    """
    return FromCookie(name, redact=redact)


def from_subprotocol(marker: str = "access_token", *, redact: bool = True) -> FromSubprotocol:
    """The token offered as the subprotocol after *marker*; the accept names *marker*.

    The token is removed from ``Sec-WebSocket-Protocol`` unless ``redact=False``;
    it never stays in ``scope["subprotocols"]``.
    """
    return FromSubprotocol(marker, redact=redact)
