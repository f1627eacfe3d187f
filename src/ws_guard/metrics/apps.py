"""Two tiny ASGI apps over a guard's metrics: Prometheus text and JSON status.

Both are class instances, not functions, so Starlette's ``Route`` and
``Mount`` treat them as raw ASGI apps. Each answers on whatever path it is
mounted at, completes lifespan on its own (so it can also run alone under
uvicorn on a separate port), and takes one snapshot per request: the cost
never grows with the number of open connections.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ws_guard._lifespan import acknowledge_lifespan
from ws_guard.errors import ConfigurationError
from ws_guard.types import Receive, Scope, Send

if TYPE_CHECKING:
    from ws_guard._core.guard import Guard

_ALLOWED = ("GET", "HEAD")


class StatusApp:
    """``GET`` returns ``guard.metrics.snapshot().as_dict()`` as JSON."""

    def __init__(self, guard: Guard) -> None:
        self.guard = _check_guard(guard, "status_app")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # a websocket on this path: not ours, the server will close it
        if scope.get("method", "GET") not in _ALLOWED:
            await _respond(send, 405, b"method not allowed\n", b"text/plain; charset=utf-8")
            return
        body = json.dumps(self.guard.metrics.snapshot().as_dict(), separators=(",", ":"))
        await _respond(send, 200, body.encode(), b"application/json", scope.get("method"))


class MetricsApp:
    """Serves the Prometheus text exposition of a registry (and OpenMetrics on request).

    The exposition itself (content negotiation, gzip, ``name[]`` filters) is
    prometheus_client's own ASGI app; this wrapper adds lifespan and method
    handling so it can be mounted anywhere or served alone.
    """

    def __init__(self, guard: Guard, registry: Any = None, *, disable_compression: bool = False):
        from ws_guard.metrics.prometheus import GuardCollector, make_asgi_app, make_registry

        _check_guard(guard, "metrics_app")
        if registry is None:
            registry = make_registry(guard)
        else:
            registry.register(GuardCollector(guard))
        self.guard = guard
        self.registry = registry
        self._app = make_asgi_app(registry, disable_compression=disable_compression)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope.get("method", "GET") not in _ALLOWED:
            await _respond(send, 405, b"method not allowed\n", b"text/plain; charset=utf-8")
            return
        await self._app(scope, receive, send)


def status_app(guard: Guard) -> StatusApp:
    """An ASGI app answering ``GET`` with the guard's snapshot as JSON.

    Mount it where a status page can poll it, e.g.
    ``Route("/status.json", ws_guard.status_app(guard))``.
    """
    return StatusApp(guard)


def metrics_app(
    guard: Guard, registry: Any = None, *, disable_compression: bool = False
) -> MetricsApp:
    """An ASGI app serving the guard's metrics in the Prometheus text format.

    Without *registry* it serves a fresh ``CollectorRegistry`` that holds only
    the guard's collector; pass a registry (even ``prometheus_client.REGISTRY``)
    to add the guard's collector to it and serve everything it holds. Needs the
    ``ws-guard[prometheus]`` extra.
    """
    return MetricsApp(guard, registry, disable_compression=disable_compression)


def _check_guard(guard: object, what: str) -> Guard:
    """The app reads the guard on every request: refuse anything else at once."""
    from ws_guard._core.guard import Guard

    if not isinstance(guard, Guard):
        raise ConfigurationError(f"{what} needs a Guard, not {guard!r}")
    return guard


async def _respond(
    send: Send, status: int, body: bytes, content_type: bytes, method: str | None = None
) -> None:
    headers = [
        (b"content-type", content_type),
        *([(b"allow", b"GET, HEAD")] if status == 405 else []),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
