"""Planned ends in the Python reconnect policy: validation and the table's defaults."""

from __future__ import annotations

import pytest

from tests.support.helpers import FixedRandom
from ws_guard import ConfigurationError
from ws_guard.client import DEFAULT_ACTIONS, NoRetry, RandomDelay, ReconnectPolicy, Retry, Stop


@pytest.mark.parametrize("planned", ["yes", 1, None])
def test_planned_must_be_a_bool(planned: object) -> None:
    with pytest.raises(ConfigurationError, match=f"planned must be True or False, not {planned!r}"):
        RandomDelay(0, 1, planned=planned)  # type: ignore[arg-type]


def test_default_rows_for_the_lifecycle_closes() -> None:
    assert DEFAULT_ACTIONS[(1001, "max_lifetime")] == RandomDelay(0.0, 1.0, planned=True)
    assert isinstance(DEFAULT_ACTIONS[(1001, "idle_timeout")], NoRetry)
    policy = ReconnectPolicy()
    assert policy.is_planned(1001, "max_lifetime; retry-after=3")
    assert not policy.is_planned(1001, "idle_timeout")
    assert not policy.is_planned(1001, "going_away; retry-after=3")
    assert not policy.is_planned(1012, "restarting")


def test_a_user_override_can_make_a_rotation_count_again() -> None:
    policy = ReconnectPolicy(
        overrides={(1001, "max_lifetime"): RandomDelay(0, 1)},
        max_attempts=1,
        random_source=FixedRandom(0.5),
    )
    session = policy.session()
    first = session.closed(1001, "max_lifetime; retry-after=1")
    assert first == Retry(1.5, 1001, "max_lifetime; retry-after=1", 1)
    second = session.closed(1001, "max_lifetime; retry-after=1")
    assert isinstance(second, Stop)
    assert second.attempt == 2
