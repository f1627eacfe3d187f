"""An async callable where ws_guard calls without ``await`` is refused at construction.

Called without ``await``, an ``async def`` returns a coroutine that never
runs and is a true value: an async ``Content`` check allowed every message,
an async ``match`` counted every message as its kind, an async key gave
each connection a key of its own (a shared limit that never limited), an
async tier callable failed every handshake. Each is refused where it is
given, in its three shapes: an ``async def``, a ``functools.partial`` of
one, an object whose ``__call__`` is one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from ws_guard import ConfigurationError, Guard, load, rules
from ws_guard.client import connect


async def _async_fn(value: object) -> bool:
    return True


def _sync_fn(value: object) -> str:
    return "1/second"


class _AsyncCall:
    async def __call__(self, value: object) -> bool:
        return True


class _SyncCall:
    def __call__(self, value: object) -> str:
        return "1/second"


ASYNC_SHAPES: dict[str, Any] = {
    "async-def": _async_fn,
    "partial": functools.partial(_async_fn),
    "async-call-object": _AsyncCall(),
}

#: Each place that calls a user's callable without await: (what the message names, build).
PLACES: dict[str, tuple[str, Callable[[Any], object]]] = {
    "content": ("Content check", lambda f: rules.Content(f, name="c")),
    "json-validator": ("Json validator", lambda f: rules.Json(f)),
    "match": ("MessageRate match", lambda f: rules.MessageRate("1/second", match=f, name="k")),
    "message-rate-key": ("MessageRate key", lambda f: rules.MessageRate("1/second", key=f)),
    "message-rate-tier": ("MessageRate tier callable", lambda f: rules.MessageRate(f)),
    "connect-rate-key": ("ConnectRate key", lambda f: rules.ConnectRate("1/second", key=f)),
    "connect-rate-tier": (
        "ConnectRate tier callable",
        lambda f: rules.ConnectRate(f, key=rules.by_ip),
    ),
    "cap-key": ("MaxConnectionsPerKey key", lambda f: rules.MaxConnectionsPerKey(2, key=f)),
    "cap-tier": (
        "MaxConnectionsPerKey tier callable",
        lambda f: rules.MaxConnectionsPerKey(f, key=rules.by_ip),
    ),
    "refresh": (
        "JWTAuth refresh",
        lambda f: rules.JWTAuth("s" * 32, algorithms=["HS256"], refresh=f),
    ),
    "shed-priority": ("ShedOpen priority", lambda f: load.ShedOpen(priority=f)),
    "on-close": ("on_close", lambda f: Guard(on_close=f)),
    "clock": ("clock", lambda f: Guard(clock=f)),
    "on-decision": ("on_decision", lambda f: connect("ws://h/ws", on_decision=f)),
}


@pytest.mark.parametrize("shape", sorted(ASYNC_SHAPES))
@pytest.mark.parametrize("place", sorted(PLACES))
def test_an_async_callable_is_refused_where_it_would_not_be_awaited(place: str, shape: str) -> None:
    what, build = PLACES[place]
    value = ASYNC_SHAPES[shape]
    with pytest.raises(ConfigurationError) as info:
        build(value)
    message = str(info.value)
    assert message.startswith(f"{what} must be a plain (not async) callable"), message
    assert repr(value) in message


@pytest.mark.parametrize("shape", [_sync_fn, functools.partial(_sync_fn), _SyncCall()])
def test_plain_callables_of_every_shape_are_taken(shape: Any) -> None:
    assert rules.MessageRate(shape).tiers is not None
    assert rules.MessageRate("1/second", match=shape, name="k").match is shape
    assert rules.MaxConnectionsPerKey(2, key=shape).key is shape
