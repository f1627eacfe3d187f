"""Take a handshake token out of every copy of the request the app can read.

A token source finds its token in the scope; these functions then edit the
scope so the app, and anything that logs the scope (error reporters, access
logs that read ``query_string``), never sees it. Each edit touches only the
token: other header lines, other cookies, other query parameters and other
subprotocols stay byte-identical, in order, and an unchanged list is not
replaced.

What cannot be reached from here: the server's own logs written before the
app runs (uvicorn at ``--log-level trace`` prints raw headers) and every
proxy in front. See docs/auth.md.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote_plus

from ws_guard.errors import ConfigurationError
from ws_guard.types import Scope

REDACTED = "redacted"
_REDACTED = REDACTED.encode()


def check_redact(what: str, redact: object) -> bool:
    """``redact=`` of a token source: a bool, so ``"no"`` cannot turn redaction on by accident."""
    if not isinstance(redact, bool):
        raise ConfigurationError(f"{what} redact must be True or False, not {redact!r}")
    return redact


def _edit_headers(scope: Scope, name: bytes, edit: Callable[[bytes], bytes | None]) -> None:
    """Replace each value of header *name* (lower-case) by ``edit(value)``; ``None`` drops it."""
    headers = scope.get("headers")
    if not headers:
        return
    edited: list[tuple[bytes, bytes]] = []
    changed = False
    for key, value in headers:
        if key.lower() == name:
            new = edit(value)
            if new != value:
                changed = True
                if new is None:
                    continue
                value = new
        edited.append((key, value))
    if changed:  # a new list: the server may hold on to its own
        scope["headers"] = edited


def query_key_is(key: bytes, name: str, raw_name: bytes | None) -> bool:
    """Whether the raw query key *key* names parameter *name*, as ``parse_qsl`` decodes it.

    ``parse_qsl`` reads the query as latin-1 and then undoes ``+`` and
    ``%``-escapes (UTF-8); a key with neither is compared byte for byte
    with *raw_name* (*name* in latin-1, ``None`` when it has no latin-1
    form), the common case, without decoding anything.
    """
    if key == raw_name:
        return True
    if b"%" not in key and b"+" not in key:
        return False
    return unquote_plus(key.decode("latin-1")) == name


def latin1(name: str) -> bytes | None:
    """*name* as latin-1 bytes, or ``None`` when it has characters outside latin-1."""
    try:
        return name.encode("latin-1")
    except UnicodeEncodeError:
        return None


def _query_without(raw: bytes, name: str) -> bytes:
    """*raw* query with every ``name=`` value replaced by ``redacted`` (``%``-encoded names too)."""
    parts = raw.split(b"&")
    raw_name = latin1(name)
    for i, part in enumerate(parts):
        key = part.split(b"=", 1)[0]
        if query_key_is(key, name, raw_name):
            parts[i] = redacted_pair(key)
    return b"&".join(parts)


def redacted_pair(key: bytes) -> bytes:
    """The query pair that stands for *key*'s token once redacted: ``key=redacted``."""
    return key + b"=" + _REDACTED


def redact_query(scope: Scope, name: str) -> None:
    """Redact parameter *name* in ``query_string``, and in ``raw_path`` if it holds the query.

    ASGI's ``raw_path`` is the path without the query; a server that keeps the
    whole request target there would otherwise hand the app a second copy.
    The value becomes ``redacted`` rather than vanishing, so a server's access
    line (``/ws?token=redacted``) still shows that a client sends tokens in
    the URL, where proxies in front have logged them.
    """
    raw = scope.get("query_string")
    if raw:
        scope["query_string"] = _query_without(raw, name)
    redact_raw_path(scope, name)


def redact_raw_path(scope: Scope, name: str) -> None:
    """Redact parameter *name* in ``raw_path`` when a server kept the query there."""
    raw_path = scope.get("raw_path")
    if isinstance(raw_path, bytes) and b"?" in raw_path:
        path, _, query = raw_path.partition(b"?")
        scope["raw_path"] = path + b"?" + _query_without(query, name)


def redact_header(scope: Scope, name: bytes, scheme: str | None) -> None:
    """Replace the credential in every *name* header line: ``Bearer redacted``.

    With a *scheme*, only lines with that scheme (case-insensitive, RFC 9110
    section 11.1) are touched: ``Authorization: Basic ...`` belongs to someone
    else. Without one, the whole value is the token.
    """

    def edit(value: bytes) -> bytes:
        if scheme is None:
            return _REDACTED if value.strip() else value
        parts = value.split(None, 1)
        if len(parts) != 2 or parts[0].decode("latin-1").lower() != scheme.lower():
            return value
        return parts[0] + b" " + _REDACTED

    _edit_headers(scope, name, edit)


def remove_cookie(scope: Scope, name: str) -> None:
    """Remove cookie *name* from every ``Cookie`` line; a line left empty is dropped.

    Removed rather than replaced: a placeholder value would reach the app's
    own cookie handling as if it were a session.
    """

    def edit(value: bytes) -> bytes | None:
        return _drop_items(value, b";", lambda pair: pair.split(b"=", 1)[0], name)

    _edit_headers(scope, b"cookie", edit)


def remove_subprotocol(scope: Scope, token: str) -> None:
    """Remove *token* from ``Sec-WebSocket-Protocol`` lines and from ``scope["subprotocols"]``.

    Every occurrence: a client that offered it twice leaves no copy behind.
    """
    subprotocols = scope.get("subprotocols")
    if subprotocols and token in subprotocols:
        scope["subprotocols"] = [p for p in subprotocols if p != token]

    def edit(value: bytes) -> bytes | None:
        return _drop_items(value, b",", lambda entry: entry, token)

    _edit_headers(scope, b"sec-websocket-protocol", edit)


def _drop_items(
    value: bytes, separator: bytes, name_of: Callable[[bytes], bytes], name: str
) -> bytes | None:
    """*value* without the items whose name is *name*; None when nothing else is left.

    The value is returned as it was (the same bytes) when no item matched.
    """
    items = value.split(separator)
    kept = [item for item in items if name_of(item).strip().decode("latin-1") != name]
    if len(kept) == len(items):
        return value
    if not any(item.strip() for item in kept):
        return None
    kept[0] = kept[0].lstrip()
    return separator.join(kept)
