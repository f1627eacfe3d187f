"""Injected clocks and random sources are checked at construction.

``Guard(clock=..., random_source=...)`` and ``rules.JWKS(clock=...)`` are
used only later (the clock on the first deadline, rate window or key fetch,
the random source on the first drain or retry hint), where a wrong type
would raise out of a connection or a drain instead of out of the constructor.
"""

from __future__ import annotations

import random

import pytest

from ws_guard import ConfigurationError, Guard, rules


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"clock": 5}, "clock must be a callable returning seconds, not 5"),
        ({"clock": "monotonic"}, "clock must be a callable returning seconds, not 'monotonic'"),
        ({"random_source": 7}, "random_source must be a random.Random, not 7"),
        ({"random_source": random.random}, "random_source must be a random.Random, not <built"),
    ],
)
def test_guard_refuses_a_clock_or_random_source_of_the_wrong_kind(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Guard(**options)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_guard_takes_a_callable_clock_and_a_random_subclass() -> None:
    guard = Guard(clock=lambda: 5.0, random_source=random.SystemRandom())
    assert guard.scheduler.now() == 5.0


def test_jwks_refuses_a_clock_that_is_not_callable() -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.JWKS("https://issuer.example/jwks", clock=300.0)  # type: ignore[arg-type]
    assert "clock must be a callable returning seconds, not 300.0" in str(info.value)
