"""The keywords every gauge shares are checked in one place and mean the same for each.

``ConnectionCount``, ``EventLoopLag`` and ``Gauge`` hand ``enforce``,
``shed_open``, ``retry_min`` and ``retry_max`` to ``LoadGauge`` unchanged, and
``Gauge``/``EventLoopLag`` check ``clear_below``/``hold`` with the same helper:
the same bad value gets the same message from each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ws_guard import ConfigurationError, load
from ws_guard.metrics import otel, prometheus
from ws_guard.metrics.snapshot import EVENT_LOOP_LAG_GAUGE

GAUGES: list[tuple[str, Callable[..., load.LoadGauge]]] = [
    ("ConnectionCount", lambda **kw: load.ConnectionCount(5, **kw)),
    ("EventLoopLag", lambda **kw: load.EventLoopLag(0.25, **kw)),
    ("Gauge", lambda **kw: load.Gauge(lambda: 0.0, 5.0, name="queue", **kw)),
]
IDS = [kind for kind, _ in GAUGES]


@pytest.mark.parametrize(("kind", "make"), GAUGES, ids=IDS)
def test_shared_keywords_reach_the_base(kind: str, make: Callable[..., load.LoadGauge]) -> None:
    shed = load.ShedOpen(after=2.0)
    gauge = make(enforce=False, shed_open=shed, retry_min=2.0, retry_max=8.0)
    assert (gauge.enforce, gauge.shed_open, gauge.retry_min, gauge.retry_max) == (
        False,
        shed,
        2.0,
        8.0,
    )
    assert type(gauge).__name__ == kind


@pytest.mark.parametrize(("kind", "make"), GAUGES, ids=IDS)
def test_shared_defaults_are_the_same_for_every_gauge(
    kind: str, make: Callable[..., load.LoadGauge]
) -> None:
    gauge = make()
    assert (gauge.enforce, gauge.shed_open, gauge.retry_min, gauge.retry_max) == (
        True,
        None,
        1.0,
        60.0,
    )


@pytest.mark.parametrize(("kind", "make"), GAUGES, ids=IDS)
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"enforce": None}, "enforce must be True or False, not None"),
        ({"enforce": 1}, "enforce must be True or False, not 1"),
        ({"shed_open": 3}, "shed_open must be a load.ShedOpen, not 3"),
        ({"retry_min": 0}, "retry_min must be a positive number of seconds, not 0"),
        ({"retry_max": 1.5}, "retry_max must be at least twice retry_min (1.0), not 1.5"),
        (
            {"retry_max": 60_000},
            "retry_max is in seconds (at most 3600); 60000 looks like milliseconds",
        ),
    ],
)
def test_a_bad_shared_keyword_gets_one_message_from_every_gauge(
    kind: str, make: Callable[..., load.LoadGauge], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make(**options)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: load.EventLoopLag(0.25, hold=-1),
            "EventLoopLag hold must be a number of seconds >= 0, not -1",
        ),
        (
            lambda: load.Gauge(float, 5.0, name="q", hold=-1),
            "Gauge hold must be a number of seconds >= 0, not -1",
        ),
        (
            lambda: load.EventLoopLag(0.25, clear_below=0.5),
            "clear_below must not exceed the limit (0.25), not 0.5",
        ),
        (
            lambda: load.Gauge(float, 5.0, name="q", clear_below=6),
            "clear_below must not exceed the limit (5.0), not 6",
        ),
        (
            lambda: load.Gauge(float, 5.0, name="q", clear_below=0),
            "clear_below must be a positive number, not 0",
        ),
    ],
)
def test_band_settings_are_checked_alike(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make()
    assert str(raised.value) == message


def test_band_defaults() -> None:
    lag = load.EventLoopLag(0.4)
    user = load.Gauge(float, 5.0, name="q")
    assert (lag.clear_below, lag.hold) == (0.2, 3.0)
    assert (user.clear_below, user.hold) == (5.0, 0.0)


def test_one_event_loop_lag_name_for_the_gauge_and_both_exporters() -> None:
    assert load.EventLoopLag().name == EVENT_LOOP_LAG_GAUGE == "event_loop_lag"
    assert prometheus.EVENT_LOOP_LAG_GAUGE is EVENT_LOOP_LAG_GAUGE
    assert otel.EVENT_LOOP_LAG_GAUGE is EVENT_LOOP_LAG_GAUGE
