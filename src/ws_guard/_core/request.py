"""What ws_guard reads from a request scope: the route path and header fields.

Both follow what the application itself would see, so a client cannot make
ws_guard read a request differently from the app behind it:

* the **route path** is the path the app routes on. Current uvicorn and
  Starlette put ``root_path`` into ``scope["path"]`` (uvicorn ``--root-path``,
  Starlette ``Mount``), so matching ``scope["path"]`` against ``paths=["/ws"]``
  would never guard a mounted endpoint;
* a **header field** may arrive as several field lines (a proxy appends its
  own ``X-Forwarded-For`` line after one the client wrote), and its value is
  all of them, in order (RFC 9110 section 5.3).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

from ws_guard.types import Scope

#: Characters of a path :func:`loggable_path` keeps: at most this many.
MAX_LOGGED_PATH = 128
#: RFC 3986 section 3.3 ``pchar`` and "/", less "%": what a request target
#: may carry unescaped. Everything else, line breaks and other controls
#: included, is written back as its UTF-8 ``%XX`` escape.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
#: RFC 6265 section 5.4: a user agent sends one Cookie line; where several
#: arrive (HTTP/2 splits them, RFC 9113 section 8.2.3) they join with "; ".
_JOINERS = {"cookie": "; "}
#: RFC 9110 section 5.3: other repeated fields join with a comma.
_DEFAULT_JOINER = ", "


def route_path(path: str, root_path: str) -> str:
    """The path the app routes on: *path* without its leading *root_path*.

    The rule is Starlette's ``starlette._utils.get_route_path`` (1.x),
    written out here so ws_guard needs no Starlette at runtime: strip
    *root_path* only when *path* starts with it at a segment boundary;
    a *path* equal to *root_path* routes as ``""``, and a *root_path* that is
    not a prefix of *path* (an older server that left it out) leaves *path*
    as it is.
    """
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


def loggable_path(path: str) -> str:
    """*path* as one short log-safe token: percent-encoded again, cut to its first characters.

    Servers decode ``%0A`` in the request target into a real line break in
    ``scope["path"]`` (uvicorn, hypercorn), so a path written to a log as it
    is can forge whole records. The result is ASCII without blanks or
    controls (RFC 3986 escapes, ``%`` itself as ``%25``); a path longer than
    :data:`MAX_LOGGED_PATH` characters keeps that many, then ``...`` and the
    full length: ``"/ws/aaa... (4004 characters)"``. Never raises, lone
    surrogates included.
    """
    text = quote(path[:MAX_LOGGED_PATH], safe=_PATH_SAFE, errors="surrogatepass")
    if len(path) > MAX_LOGGED_PATH:
        return f"{text}... ({len(path)} characters)"
    return text


def scope_route_path(scope: Scope) -> str:
    """:func:`route_path` of an ASGI scope (``path`` and ``root_path`` keys)."""
    return route_path(str(scope.get("path", "")), str(scope.get("root_path", "") or ""))


def field_lines(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Every field line of header *name* (lower-case bytes), in order, latin-1 text.

    ASGI servers pass header names lower-cased; ``.lower()`` keeps a hand-built
    scope with ``X-Forwarded-For`` working too.
    """
    return [value.decode("latin-1") for key, value in headers if key.lower() == name]


def join_field(name: str, lines: list[str]) -> str | None:
    """One field value from its lines: ``"; "`` for Cookie, ``", "`` for the rest.

    ``None`` when the request has no such field.
    """
    if not lines:
        return None
    if len(lines) == 1:
        return lines[0]
    return _JOINERS.get(name, _DEFAULT_JOINER).join(lines)


def joined_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Every header of a scope by lower-case name, repeated lines joined by :func:`join_field`."""
    grouped: dict[str, list[str]] = {}
    for key, value in headers:
        grouped.setdefault(key.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    return {name: join_field(name, lines) or "" for name, lines in grouped.items()}
