"""Rates in ``limits``' string syntax: parsed once, shown back the same way.

``"20/second"``, ``"10/second; 100/minute"`` or a ``limits`` item become
:class:`Rate` values; :func:`describe_rates` and :func:`join_rates` write
them back for a rule's repr and for its storage key names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ws_guard.errors import ConfigurationError

#: ``limits`` granularities from the longest, in seconds; a window is written
#: in the longest one that divides it, so ``str(rate)`` parses back to it.
_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
#: The longest window taken, in seconds: ten of ``limits``' 360-day years.
#: Longer is a typo, and at absurd lengths a Redis expiry overflows: each of
#: the rule's Redis calls fails ("value is not an integer or out of range")
#: and its checks fall to ``on_storage_error``.
MAX_WINDOW = 10 * 31_104_000
#: The largest limit taken: counts stay exact integers in a Lua script (doubles).
MAX_LIMIT = 2**53
#: ``1/0 seconds``: ``limits`` reads a zero multiple as one, which would make
#: the window longer or shorter than written without a word.
_ZERO_MULTIPLE = re.compile(r"(?:/|\bper\b)\s*0+\s*[a-z]", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` events per ``window`` seconds."""

    limit: int
    window: float

    def __str__(self) -> str:
        """In ``limits`` syntax, which the rules take back: ``5/second``, ``100/2 minutes``."""
        for unit, seconds in _UNITS:
            count, rest = divmod(self.window, seconds)
            if rest == 0 and count >= 1:
                return (
                    f"{self.limit}/{unit}" if count == 1 else f"{self.limit}/{int(count)} {unit}s"
                )
        return f"{self.limit}/{self.window:g} seconds"  # not from limits: no exact unit

    @property
    def compact(self) -> str:
        """``5/1s``: the form in storage key names, kept as it was so keys stay stable."""
        return f"{self.limit}/{self.window:g}s"


def parse_rates(value: object) -> tuple[Rate, ...]:
    """``"20/second"``, ``"10/second; 100/minute"``, a ``limits`` item, or a list of them."""
    from limits import RateLimitItem, parse_many

    items: list[object] = list(value) if isinstance(value, (list, tuple)) else [value]
    rates: list[Rate] = []
    for item in items:
        if isinstance(item, str):
            try:
                parsed = parse_many(item)
            except ValueError as exc:
                raise ConfigurationError(
                    f"rate {item!r} is not in limits syntax such as '20/second' or "
                    "'10/second; 100/minute'"
                ) from exc
            if _ZERO_MULTIPLE.search(item):
                raise ConfigurationError(f"rate {item!r} has a window of zero length")
        elif isinstance(item, RateLimitItem):
            parsed = [item]
        else:
            raise ConfigurationError(f"rate must be a string such as '20/second', not {item!r}")
        for limit_item in parsed:
            if limit_item.amount < 1:
                raise ConfigurationError(f"rate {item!r} must allow at least one event")
            if limit_item.amount > MAX_LIMIT:
                raise ConfigurationError(f"rate {item!r} allows more than 2**53 events")
            window = float(limit_item.get_expiry())
            if window > MAX_WINDOW:
                raise ConfigurationError(
                    f"rate {item!r} has a window of {window:g} s, longer than ten years"
                )
            rates.append(Rate(int(limit_item.amount), window))
    if not rates:
        raise ConfigurationError(f"rate {value!r} names no limit")
    return tuple(rates)


def join_rates(rates: Iterable[Rate]) -> str:
    """``5/1s,100/60s``: the rates' part of a rule's storage id."""
    return ",".join(rate.compact for rate in rates)


def describe_rates(rates: Iterable[Rate]) -> str:
    """``5/second; 100/minute``: what a rule's repr shows, and its constructor accepts."""
    return "; ".join(str(rate) for rate in rates)
