"""``ws_guard.client``: every bad argument fails at construction, naming the bad value.

``connect()`` and ``ReconnectPolicy`` are built once and used on the first
close, possibly hours later: a mistake found there ends a client's reconnect
loop with an unrelated ``TypeError``. These cases complement
``test_client_policy.py::test_misconfiguration_names_the_bad_value``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from ws_guard import ConfigurationError
from ws_guard.client import Backoff, RandomDelay, ReconnectPolicy, RefreshToken, connect

URL = "ws://127.0.0.1:9/ws"  # never dialled: every case fails before a connect


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: connect("http://example.com/ws"), "url must be a ws:// or wss:// URL, not "),
        (lambda: connect(b"ws://example.com/ws"), "not b'ws://example.com/ws'"),  # type: ignore[arg-type]
        (lambda: connect("example.com/ws"), "not 'example.com/ws'"),
        (lambda: connect(URL, "a-token"), "token_provider must be callable, not 'a-token'"),  # type: ignore[arg-type]
        (
            lambda: connect(URL, token_source="cookie"),
            "token_source must be one of ('query', 'header', 'subprotocol'), not 'cookie'",
        ),
        (
            lambda: connect(URL, token_source="subprotocol"),
            "token_source='subprotocol' needs token_name",
        ),
        (lambda: connect(URL, token_name=""), "token_name must be a non-empty string, not ''"),
        (lambda: connect(URL, token_name=7), "token_name must be a non-empty string, not 7"),  # type: ignore[arg-type]
        (lambda: connect(URL, policy={}), "policy must be a ReconnectPolicy, not {}"),  # type: ignore[arg-type]
        (lambda: connect(URL, on_decision="log"), "on_decision must be callable, not 'log'"),  # type: ignore[arg-type]
        (lambda: connect(URL, uri=URL), "connect() does not take 'uri'"),
        (lambda: connect(URL, process_exception=print), "does not take 'process_exception'"),
    ],
)
def test_connect_refuses_bad_arguments(build: Callable[[], Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build()
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ReconnectPolicy(cap=True), "cap must be a finite number > 0, not True"),
        (lambda: ReconnectPolicy(cap="60"), "cap must be a finite number > 0, not '60'"),
        (lambda: ReconnectPolicy(cap=float("nan")), "cap must be a finite number > 0, not nan"),
        (
            lambda: ReconnectPolicy(stable_after=float("nan")),
            "stable_after must be a finite number > 0, not nan",
        ),
        (
            lambda: ReconnectPolicy(max_hint=float("inf")),
            "max_hint must be a finite number > 0, not inf",
        ),
        (
            lambda: ReconnectPolicy(cap=4_000_000),
            "cap is in seconds (at most 3600); 4000000 is far too long",
        ),
        (
            lambda: ReconnectPolicy(max_attempts=1.5),
            "max_attempts must be None or an int >= 1, not 1.5",
        ),
        (
            lambda: ReconnectPolicy(max_attempts="3"),
            "max_attempts must be None or an int >= 1, not '3'",
        ),
        (lambda: ReconnectPolicy(overrides={True: Backoff()}), "not True"),
        (lambda: ReconnectPolicy(overrides={5000: Backoff()}), "not 5000"),
        (lambda: ReconnectPolicy(overrides={(999, "x"): Backoff()}), "not (999, 'x')"),
        (
            lambda: ReconnectPolicy(overrides={(1008, "a", "b"): Backoff()}),
            "not (1008, 'a', 'b')",
        ),
        (lambda: ReconnectPolicy(fallback=Backoff), "fallback must be Backoff, RandomDelay"),  # type: ignore[arg-type]
        (lambda: ReconnectPolicy(clock=5), "clock must be a callable returning seconds, not 5"),  # type: ignore[arg-type]
        (
            lambda: ReconnectPolicy(random_source="seed"),  # type: ignore[arg-type]
            "random_source must be a random.Random, not 'seed'",
        ),
        (
            lambda: Backoff(factor=float("inf")),
            "Backoff factor must be a finite number >= 1, not inf",
        ),
        (lambda: Backoff(initial=True), "Backoff initial must be a finite number > 0, not True"),
        (
            lambda: RandomDelay(0, float("nan")),
            "RandomDelay high must be a finite number >= 0, not nan",
        ),
        (lambda: RandomDelay("1", 2), "RandomDelay low must be a finite number >= 0, not '1'"),  # type: ignore[arg-type]
        (
            lambda: RefreshToken(1.5),  # type: ignore[arg-type]
            "RefreshToken max_refreshes must be an int >= 1, not 1.5",
        ),
        (
            lambda: RefreshToken(True),
            "RefreshToken max_refreshes must be an int >= 1, not True",
        ),
    ],
)
def test_policy_refuses_bad_arguments(build: Callable[[], Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build()
    assert message in str(info.value)


def test_policy_takes_a_clock_and_a_random_subclass() -> None:
    policy = ReconnectPolicy(clock=lambda: 0.0, random_source=random.SystemRandom())
    assert policy.clock() == 0.0


@pytest.mark.parametrize("value", [5, "", b"secret-token-bytes", None])
async def test_a_bad_token_from_the_provider_fails_before_any_connect(value: object) -> None:
    with pytest.raises(TypeError) as info:
        await connect(URL, lambda: value).__anext__()  # type: ignore[arg-type,return-value]
    message = str(info.value)
    assert message == f"token_provider must return a non-empty str, not {type(value).__name__}"
    assert "secret" not in message  # the value may be a token: never in the message
