"""``connect()``: a reconnecting async iterator over ``websockets`` connections.

In the style of ``websockets.connect``: ``async for ws in connect(url)``
yields a fresh connection each time the policy allows one. Unlike
``websockets``' own reconnect (which retries every failure with the same
back-off), each close code gets what the server asked for, a token provider
is called when the token expired, and a refusal ends in :class:`GaveUp`.
``websockets`` is imported lazily: it is the ``ws-guard[client]`` extra.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ws_guard._validate import check_sync_callable
from ws_guard.codes import ABNORMAL_CLOSURE, NO_STATUS, NORMAL
from ws_guard.errors import ConfigurationError, WSGuardError

from ._actions import Decision, RefreshThenRetry, Stop
from ._http import close_from_http
from ._policy import ReconnectPolicy

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

logger = logging.getLogger("ws_guard.client")

TokenProvider = Callable[[], str | Awaitable[str]]
OnDecision = Callable[[Decision], object]
TOKEN_SOURCES = ("query", "header", "subprotocol")
#: Closes that end the iteration quietly when the policy stops on them.
_NORMAL_END = frozenset({NORMAL, NO_STATUS})


class GaveUp(WSGuardError):
    """The policy stopped reconnecting; ``code`` and ``reason`` are the last close's."""

    def __init__(self, decision: Stop) -> None:
        self.decision = decision
        self.code = decision.code
        self.reason = decision.reason
        super().__init__(
            f"gave up reconnecting after close {decision.code} {decision.reason!r}: {decision.why}"
        )


def connect(
    url: str,
    token_provider: TokenProvider | None = None,
    *,
    policy: ReconnectPolicy | None = None,
    token_source: str = "query",
    token_name: str | None = None,
    on_decision: OnDecision | None = None,
    **connect_kwargs: Any,
) -> Reconnecting:
    """Reconnect to *url* as *policy* allows, yielding each new connection.

    ``token_provider()`` (sync or async) is called before the first
    connection and after each ``token_expired``; its token is sent as the
    query parameter ``token_name`` (default ``token``), as an ``Authorization:
    Bearer`` header (``token_name`` to change the header), or as the
    subprotocols ``[token_name, token]`` (``token_name`` is the marker the
    server's ``rules.from_subprotocol(marker)`` expects). Other keyword
    arguments go to ``websockets.asyncio.client.connect``.
    """
    try:
        import websockets.asyncio.client  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ImportError(
            "ws_guard.client.connect needs websockets: pip install 'ws-guard[client]'"
        ) from exc
    return Reconnecting(
        url,
        token_provider,
        policy=policy,
        token_source=token_source,
        token_name=token_name,
        on_decision=on_decision,
        connect_kwargs=connect_kwargs,
    )


class Reconnecting:
    """What :func:`connect` returns: an async iterator of connections.

    Iterate it once. Leaving the loop with ``break`` leaves the current
    connection open until :meth:`aclose` (or ``contextlib.aclosing``).
    """

    def __init__(
        self,
        url: str,
        token_provider: TokenProvider | None,
        *,
        policy: ReconnectPolicy | None,
        token_source: str,
        token_name: str | None,
        on_decision: OnDecision | None,
        connect_kwargs: dict[str, Any],
    ) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss"):
            raise ConfigurationError(f"url must be a ws:// or wss:// URL, not {url!r}")
        if token_provider is not None and not callable(token_provider):
            raise ConfigurationError(f"token_provider must be callable, not {token_provider!r}")
        if token_source not in TOKEN_SOURCES:
            raise ConfigurationError(
                f"token_source must be one of {TOKEN_SOURCES}, not {token_source!r}"
            )
        if token_name is None and token_source == "subprotocol":
            raise ConfigurationError(
                "token_source='subprotocol' needs token_name: the marker the server expects"
            )
        if token_name is not None and (not isinstance(token_name, str) or not token_name):
            raise ConfigurationError(f"token_name must be a non-empty string, not {token_name!r}")
        if policy is not None and not isinstance(policy, ReconnectPolicy):
            raise ConfigurationError(f"policy must be a ReconnectPolicy, not {policy!r}")
        if on_decision is not None and not callable(on_decision):
            raise ConfigurationError(f"on_decision must be callable, not {on_decision!r}")
        check_sync_callable("on_decision", on_decision)
        for taken in ("uri", "process_exception"):
            if taken in connect_kwargs:
                raise ConfigurationError(f"connect() does not take {taken!r}")
        self.url = url
        self.token_provider = token_provider
        self.policy = policy or ReconnectPolicy()
        self.token_source = token_source
        self.token_name = token_name or {"query": "token", "header": "Authorization"}.get(
            token_source, ""
        )
        self.on_decision = on_decision
        self.connect_kwargs = connect_kwargs
        #: The most recent decision, for callers that want to look back.
        self.last_decision: Decision | None = None
        self._loop: AsyncGenerator[ClientConnection, None] | None = None

    def __repr__(self) -> str:
        return f"Reconnecting(url={self.url!r}, token_source={self.token_source!r})"

    def __aiter__(self) -> Reconnecting:
        return self

    async def __anext__(self) -> ClientConnection:
        if self._loop is None:
            self._loop = self._run()
        return await self._loop.__anext__()

    async def aclose(self) -> None:
        """Stop: close the current connection. ``contextlib.aclosing`` calls this."""
        if self._loop is not None:
            await self._loop.aclose()

    async def _run(self) -> AsyncGenerator[ClientConnection, None]:
        from websockets.asyncio.client import connect as ws_connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus
        from websockets.protocol import State

        session = self.policy.session()
        token: str | None = None
        need_token = self.token_provider is not None
        while True:
            if need_token:
                token = await self._fetch_token()
                need_token = False
            url, kwargs = self._target(token)
            try:
                ws = await ws_connect(url, **kwargs)
            except InvalidStatus as exc:
                response = exc.response
                code, reason = close_from_http(
                    response.status_code, response.headers, bytes(response.body)
                )
                decision = session.closed(code, reason)
            except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
                logger.info("ws_guard client: connect failed: %s", type(exc).__name__)
                decision = session.closed(ABNORMAL_CLOSURE, "")
            else:
                session.opened()
                # A guard that refuses after accepting usually sends its close with
                # the handshake; such a connection is judged, not handed out.
                if ws.state is State.OPEN:
                    try:
                        yield ws
                    except GeneratorExit:  # the caller left the loop: close, decide nothing
                        await ws.close()
                        raise
                code, reason = await _ended(ws)
                decision = session.closed(code, reason)
            if isinstance(decision, RefreshThenRetry) and self.token_provider is None:
                why = "the token expired and there is no token_provider to refresh it"
                decision = Stop(decision.code, decision.reason, decision.attempt, why)
            self._report(decision)
            if isinstance(decision, Stop):
                if decision.code in _NORMAL_END:
                    return
                raise GaveUp(decision)
            need_token = isinstance(decision, RefreshThenRetry)
            await asyncio.sleep(decision.delay)

    async def _fetch_token(self) -> str:
        provider = cast(TokenProvider, self.token_provider)
        value = provider()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str) or not value:
            # Never put the value in the message: it may be a token.
            raise TypeError(
                f"token_provider must return a non-empty str, not {type(value).__name__}"
            )
        return value

    def _target(self, token: str | None) -> tuple[str, dict[str, Any]]:
        """The URL and ``websockets`` arguments carrying *token*."""
        kwargs = dict(self.connect_kwargs)
        if token is None:
            return self.url, kwargs
        if self.token_source == "query":
            parts = urlsplit(self.url)
            query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
            query = [(k, v) for k, v in query if k != self.token_name]
            query.append((self.token_name, token))
            return urlunsplit(parts._replace(query=urlencode(query))), kwargs
        if self.token_source == "header":
            from websockets.datastructures import Headers

            headers = Headers(kwargs.get("additional_headers") or {})
            if self.token_name in headers:
                del headers[self.token_name]
            headers[self.token_name] = f"Bearer {token}"
            kwargs["additional_headers"] = headers
            return self.url, kwargs
        kwargs["subprotocols"] = [self.token_name, token, *(kwargs.get("subprotocols") or ())]
        return self.url, kwargs

    def _report(self, decision: Decision) -> None:
        self.last_decision = decision
        if isinstance(decision, Stop):
            logger.warning(
                "ws_guard client: close code=%d reason=%r attempt=%d: stop (%s)",
                decision.code,
                decision.reason,
                decision.attempt,
                decision.why,
                extra={"ws_code": decision.code, "ws_decision": "stop"},
            )
        else:
            kind = "refresh token, retry" if isinstance(decision, RefreshThenRetry) else "retry"
            logger.info(
                "ws_guard client: close code=%d reason=%r attempt=%d: %s in %.2f s",
                decision.code,
                decision.reason,
                decision.attempt,
                kind,
                decision.delay,
                extra={"ws_code": decision.code, "ws_decision": kind},
            )
        if self.on_decision is not None:
            self.on_decision(decision)


async def _ended(ws: ClientConnection) -> tuple[int, str]:
    """The close the policy judges: the server's, or 1006 when it sent none first.

    If the caller asks for the next connection while this one is open, it is
    closed here; a close the client started (or a keepalive timeout) is not
    the server's word, so it counts as 1006 and is backed off like a drop.
    """
    from websockets.protocol import State

    if ws.state is State.OPEN:
        await ws.close()
    else:
        await ws.wait_closed()
    protocol = ws.protocol
    received = protocol.close_rcvd
    if received is not None and protocol.close_rcvd_then_sent is not False:
        return received.code, received.reason
    return ABNORMAL_CLOSURE, ""
