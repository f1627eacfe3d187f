"""Injected clocks and random sources are checked at construction.

``Guard(clock=..., random_source=...)`` and ``rules.JWKS(clock=...)`` are
used only later (the clock on the first deadline, rate window or key fetch,
the random source on the first drain or retry hint), where a wrong type
would raise out of a connection or a drain instead of out of the constructor.
A guard's clock must also be a ``ManualClock``: a guard with an injected
clock arms no timer, so any other clock would turn every deadline off.
"""

from __future__ import annotations

import random
import time

import anyio
import pytest

from ws_guard import ConfigurationError, Guard, rules
from ws_guard.testing import ManualClock


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


def test_guard_takes_a_manual_clock_and_a_random_subclass() -> None:
    clock = ManualClock(5.0)
    guard = Guard(clock=clock, random_source=random.SystemRandom())
    assert guard.scheduler.now() == 5.0
    assert clock.advance(2.5) == 7.5
    assert guard.scheduler.now() == 7.5
    assert guard.scheduler.manual


@pytest.mark.parametrize(
    "clock", [time.monotonic, time.time, lambda: 5.0, ManualClock().__call__], ids=repr
)
def test_guard_refuses_a_clock_that_would_turn_its_deadlines_off(clock: object) -> None:
    # A guard with an injected clock arms no timer: with time.monotonic passed
    # in production, token expiry, idle and send limits would never fire.
    with pytest.raises(ConfigurationError) as info:
        Guard(clock=clock)  # type: ignore[arg-type]
    assert str(info.value) == (
        "Guard(clock=...) arms no timer (deadlines run only when a test calls "
        "guard.scheduler.run_due()), so it takes a ws_guard.testing.ManualClock, "
        f"not {clock!r}; leave it out to run on the event loop's clock"
    )


async def test_without_a_clock_a_deadline_fires_on_the_loop() -> None:
    guard = Guard()
    fired: list[str] = []
    guard.scheduler.call_later(0.01, lambda: fired.append("fired"))
    assert not guard.scheduler.manual
    assert guard.scheduler.timer_armed
    with anyio.fail_after(2):
        while not fired:
            await anyio.sleep(0.005)
    assert fired == ["fired"]


def test_jwks_refuses_a_clock_that_is_not_callable() -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.JWKS("https://issuer.example/jwks", clock=300.0)  # type: ignore[arg-type]
    assert "clock must be a callable returning seconds, not 300.0" in str(info.value)
