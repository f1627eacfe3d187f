"""Construction-time checks shared by gauges, shedding and drain settings."""

from __future__ import annotations

import math

from ._errors import ConfigurationError


def check_positive(what: str, value: object, *, integer: bool = False) -> float:
    """Validate a positive finite number (or int), naming *what* in the error."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or not math.isfinite(value)  # type: ignore[arg-type]
        or value <= 0  # type: ignore[operator]
    ):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigurationError(f"{what} must be {kind}, not {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_non_negative(what: str, value: object) -> float:
    """Validate a finite number >= 0, naming *what* in the error."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigurationError(f"{what} must be a number >= 0, not {value!r}")
    return float(value)
