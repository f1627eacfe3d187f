"""``admin_app(guard, token=...)``: the control plane over HTTP JSON, behind a bearer token.

A pure ASGI app to mount on an internal port only (docs/control.md). It
never serves on its own: the user mounts it or runs it under a server. Every
request must carry ``Authorization: Bearer <token>``, compared in constant
time (``hmac.compare_digest``); a request that puts a credential in the query
string is refused before anything else, since query strings land in access
logs and proxies (RFC 6750 section 5.3: "Don't pass bearer tokens in page
URLs").

Routes, relative to where the app is mounted:

======  ===============  ==========================================================
GET     ``/connections`` ``guard.connections()``: ``{"connections": [...]}``
POST    ``/disconnect``  ``{"subject"|"key"|"connection_id", "code"?, "reason"?}``
POST    ``/revoke``      ``{"jti"|"subject", "until"}`` (epoch seconds)
GET     ``/bans``        ``guard.bans()``: ``{"bans": [...]}``
POST    ``/unban``       ``{"key"}``
======  ===============  ==========================================================

Answers: 200 with JSON; 400 for a body or argument ws_guard refuses (the
``ConfigurationError`` message) and for a credential in the query string,
401 without a valid token, 404, 405, 413 for a body over :data:`MAX_BODY`
bytes, 415 for a body that is not a JSON object, 503 when the guard is not
started in the event loop serving the request (the app must share the
guarded app's process and loop). A WebSocket upgrade is refused with 403.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ws_guard._core.request import joined_headers, route_path
from ws_guard._json import Unreadable, read_json
from ws_guard._lifespan import acknowledge_lifespan
from ws_guard.errors import ConfigurationError
from ws_guard.types import Receive, Scope, Send

if TYPE_CHECKING:
    from ws_guard._core.guard import Guard

#: Bytes a request body may have: the largest valid one is a few hundred.
MAX_BODY = 16 * 1024
#: A shorter token is guessable: 32 characters of ``secrets.token_urlsafe()`` is 192 bits.
MIN_TOKEN_CHARS = 32
#: Query parameter names that carry a credential by convention (RFC 6750 section 2.3).
_CREDENTIAL_PARAMS = frozenset({"access_token", "token", "bearer", "authorization", "auth"})
_POST_FIELDS = {
    "/disconnect": frozenset({"subject", "key", "connection_id", "code", "reason"}),
    "/revoke": frozenset({"jti", "subject", "until"}),
    "/unban": frozenset({"key"}),
}
_GETS = frozenset({"/connections", "/bans"})


class AdminApp:
    """The ASGI app :func:`admin_app` returns."""

    def __init__(self, guard: Guard, token: str) -> None:
        from ws_guard._core.guard import Guard

        if not isinstance(guard, Guard):
            raise ConfigurationError(f"admin_app needs a Guard, not {guard!r}")
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS or token != token.strip():
            shown = token if not isinstance(token, str) else f"a {len(token)}-character string"
            raise ConfigurationError(
                f"admin_app token must be a string of at least {MIN_TOKEN_CHARS} characters "
                f"without surrounding spaces (secrets.token_urlsafe(32)), not {shown!r}"
            )
        if not token.isascii() or not token.isprintable():
            raise ConfigurationError(
                "admin_app token must be printable ASCII: it travels in an HTTP header"
            )
        self.guard = guard
        self._secret = token.encode("ascii")
        self._token = token

    def __repr__(self) -> str:
        return "AdminApp(token=<hidden>)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if kind == "websocket":
            await _refuse_websocket(receive, send)
            return
        if kind != "http":
            return
        status, body = await self._handle(scope, receive)
        await _respond(
            send,
            status,
            body,
            allow=_allow(scope) if status == 405 else None,
            head=scope.get("method") == "HEAD",
        )

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        if self._token_in_query(scope.get("query_string", b"")):
            return 400, {"error": "credentials are not accepted in the query string"}
        headers = joined_headers(scope.get("headers", ()))
        if not self._authorized(headers.get("authorization", "")):
            return 401, {"error": "a valid Authorization: Bearer token is required"}
        if not self.guard.started:
            # Closing a connection schedules work on the guard's own loop: from
            # another loop (a second server in a thread) it would never run.
            return 503, {
                "error": "the guard is not started in this event loop: serve admin_app "
                "in the same process and event loop as the guarded app"
            }
        path = route_path(scope.get("path", ""), scope.get("root_path", "")) or "/"
        method = scope.get("method", "GET")
        if path in _GETS:
            if method not in ("GET", "HEAD"):
                return 405, {"error": f"{path} takes GET"}
            return 200, await self._get(path)
        fields = _POST_FIELDS.get(path)
        if fields is None:
            return 404, {"error": "no such route"}
        if method != "POST":
            return 405, {"error": f"{path} takes POST"}
        args = await _read_body(receive)
        if isinstance(args, tuple):
            return args
        unknown = sorted(set(args) - fields)
        if unknown:
            return 400, {"error": f"unknown fields {unknown}; {path} takes {sorted(fields)}"}
        try:
            return 200, await self._post(path, args)
        except ConfigurationError as exc:
            return 400, {"error": str(exc)}

    def _authorized(self, header: str) -> bool:
        """Whether *header* (the joined Authorization value) is ``Bearer <token>``.

        The scheme is case-insensitive (RFC 9110 section 11.1: ``bearer`` is
        ``Bearer``); one or more spaces separate it from the token (RFC 9110
        section 11.4). Both parts are compared in constant time and combined
        without an early exit, so the answer's timing says nothing of which
        part or byte was wrong. Two Authorization lines join with ", " and match no token.
        """
        scheme, _, credential = header.partition(" ")
        scheme_ok = hmac.compare_digest(scheme.lower().encode("latin-1"), b"bearer")
        token_ok = hmac.compare_digest(credential.lstrip(" ").encode("latin-1"), self._secret)
        return scheme_ok & token_ok

    def _token_in_query(self, query: bytes) -> bool:
        """A credential in the query string: a conventional name, or the token itself."""
        text = query.decode("latin-1")
        if self._token in text:
            return True
        pairs = parse_qsl(text, keep_blank_values=True)
        # Names too: a percent-encoded token as a name is still the token in the logs.
        return any(
            name.lower() in _CREDENTIAL_PARAMS or self._token in name or self._token in value
            for name, value in pairs
        )

    async def _get(self, path: str) -> dict[str, Any]:
        if path == "/connections":
            found = self.guard.connections()
            return {"connections": [dataclasses.asdict(c) for c in found]}
        return {"bans": [dataclasses.asdict(b) for b in await self.guard.bans()]}

    async def _post(self, path: str, args: dict[str, Any]) -> dict[str, Any]:
        if path == "/disconnect":
            return {"closed": await self.guard.disconnect(**args)}
        if path == "/revoke":
            if "until" not in args:
                raise ConfigurationError("revoke needs until (seconds since the epoch)")
            return {"closed": await self.guard.revoke(**args)}
        if "key" not in args:
            raise ConfigurationError("unban needs key")
        return {"lifted": await self.guard.unban(args["key"])}


def admin_app(guard: Guard, *, token: str) -> AdminApp:
    """An ASGI app that lists, disconnects, revokes and unbans over HTTP JSON.

    Every request needs ``Authorization: Bearer <token>`` (at least 32
    characters; compared in constant time). Mount it on an internal port or
    path only (docs/control.md). Raises :class:`ConfigurationError` for a
    guard that is not a :class:`ws_guard.Guard` or a short token.
    """
    return AdminApp(guard, token)


async def _read_body(receive: Receive) -> dict[str, Any] | tuple[int, dict[str, Any]]:
    """The JSON object the request carries, or the error answer."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return 400, {"error": "the client left"}
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return 413, {"error": f"the body is over {MAX_BODY} bytes"}
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        return 415, {"error": "the body must be a JSON object in UTF-8"}
    value = read_json(text or "{}")
    if isinstance(value, Unreadable) or not isinstance(value, dict):
        return 415, {"error": "the body must be a JSON object"}
    return value


def _allow(scope: Scope) -> bytes:
    path = route_path(scope.get("path", ""), scope.get("root_path", "")) or "/"
    return b"GET, HEAD" if path in _GETS else b"POST"


async def _refuse_websocket(receive: Receive, send: Send) -> None:
    """Refuse a WebSocket upgrade with HTTP 403: a close before accept (ASGI spec).

    An app that returns without answering the handshake is a server error:
    uvicorn answers 500 and logs it at ERROR, once per request anyone can send.
    """
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})


async def _respond(
    send: Send,
    status: int,
    data: dict[str, Any],
    *,
    allow: bytes | None = None,
    head: bool = False,
) -> None:
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="ws_guard"'))
    if allow is not None:
        headers.append((b"allow", allow))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
