"""Construction-time numeric checks, in one place for every setting.

A setting is a real number: never a bool (``True`` is an ``int`` to Python,
never a count to a user), never NaN or infinite. Every message names the
setting and the bad value; *what* carries the owner when it helps
(``"JWTAuth leeway"``).
"""

from __future__ import annotations

import inspect
import math
import random
import sys
from collections.abc import Callable
from typing import TypeGuard

from ws_guard._clocks import ManualClock
from ws_guard.errors import ConfigurationError

#: The largest count (``integer=True``): every int up to it is exactly a
#: float, and a deque or a Redis counter takes it. No count is larger.
MAX_COUNT = 2**53
#: The largest int a number may be: ``float()`` of a larger one raises
#: ``OverflowError`` where a ``ConfigurationError`` is due.
_MAX_FLOAT_INT = int(sys.float_info.max)


def is_number(value: object, *, integer: bool = False) -> TypeGuard[float]:
    """A finite int or float (only an int when *integer*), never a bool.

    An int counts only when ``float(value)`` is finite (at most
    :data:`MAX_COUNT` in size when *integer*), so every check after this one
    may compute with ``float(value)``.
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= (MAX_COUNT if integer else _MAX_FLOAT_INT)
    return not integer and isinstance(value, float) and math.isfinite(value)


def _of(unit: str) -> str:
    return f" of {unit}" if unit else ""


def check_positive(what: str, value: object, *, unit: str = "") -> float:
    """A finite number > 0: ``retry_min must be a positive number, not 0``."""
    if not is_number(value) or value <= 0:
        raise ConfigurationError(f"{what} must be a positive number{_of(unit)}, not {value!r}")
    return float(value)


def check_non_negative(what: str, value: object, *, unit: str = "") -> float:
    """A finite number >= 0: ``hold must be a number >= 0, not -1``."""
    if not is_number(value) or value < 0:
        raise ConfigurationError(f"{what} must be a number{_of(unit)} >= 0, not {value!r}")
    return float(value)


def check_seconds(what: str, value: object, *, maximum: float, positive: bool = True) -> float:
    """A duration in seconds, refused above *maximum*: a value past it is a unit mistake.

    ``EventLoopLag limit is in seconds (at most 10); 250 looks like milliseconds``.
    Every bound is far above any sane setting and below the same setting
    written in milliseconds, so the mistake cannot pass silently.
    """
    seconds = (check_positive if positive else check_non_negative)(what, value, unit="seconds")
    check_at_most_seconds(what, seconds, maximum=maximum)
    return seconds


def check_at_most_seconds(what: str, seconds: float, *, maximum: float) -> None:
    """The upper half of :func:`check_seconds`, for a number already checked below."""
    if seconds > maximum:
        hint = "looks like milliseconds" if seconds / 1000 <= maximum else "is far too long"
        shown = f"{seconds:.0f}" if seconds.is_integer() else repr(seconds)
        raise ConfigurationError(f"{what} is in seconds (at most {maximum:g}); {shown} {hint}")


def check_count(what: str, value: object) -> int:
    """An int >= 1: ``lease must be a positive integer, not 0``."""
    if not is_number(value, integer=True) or value < 1:
        raise ConfigurationError(f"{what} must be a positive integer, not {value!r}")
    return int(value)


def check_number(
    what: str,
    value: object,
    *,
    minimum: float = 0.0,
    strict: bool = False,
    integer: bool = False,
) -> None:
    """Any lower bound, spelled as a comparison: ``cap must be a finite number > 0, not 0``.

    With *integer*: ``max_token_bytes must be an int >= 256, not 10``.
    """
    ok = is_number(value, integer=integer) and (value > minimum if strict else value >= minimum)
    if not ok:
        kind = "an int" if integer else "a finite number"
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ConfigurationError(f"{what} must be {kind} {bound}, not {value!r}")


def check_clear_below(clear_below: object, limit: float, *, default: float) -> float:
    """Where a tripped gauge clears: *default* when None, else positive and at most *limit*."""
    clear = default if clear_below is None else check_positive("clear_below", clear_below)
    if clear > limit:
        raise ConfigurationError(
            f"clear_below must not exceed the limit ({limit!r}), not {clear_below!r}"
        )
    return clear


#: Characters of a bad value's repr in a message about user code's result.
MAX_SHOWN = 80


def shown(value: object) -> str:
    """``repr(value)``, cut to :data:`MAX_SHOWN` characters for a log line.

    For values user code returns at run time (a tier callable's result): a
    1 MB string would otherwise make a 1 MB log line.
    """
    text = repr(value)
    if len(text) <= MAX_SHOWN:
        return text
    return f"{text[:MAX_SHOWN]}... ({len(text)} characters)"


def is_async_callable(value: object) -> bool:
    """Whether calling *value* returns a coroutine: an ``async def`` function, a
    ``functools.partial`` of one, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
        getattr(value, "__call__", None)  # noqa: B004 - async callable objects
    )


def check_sync_callable(what: str, value: object) -> None:
    """Refuse an async *value* where ws_guard calls without ``await``.

    Its coroutine would never run, and as a result it is a true value: an
    async ``Content`` check would allow every message, an async ``match``
    count every one, an async key give each connection a key of its own.
    ``ConfigurationError`` names *what* and the value.
    """
    if is_async_callable(value):
        raise ConfigurationError(
            f"{what} must be a plain (not async) callable: ws_guard calls it without await, "
            f"so the coroutine of {value!r} would never run"
        )


def check_clock(clock: object) -> Callable[[], float] | None:
    """An injected clock: ``None`` or a callable returning seconds (first called much later)."""
    if clock is not None and not callable(clock):
        raise ConfigurationError(f"clock must be a callable returning seconds, not {clock!r}")
    check_sync_callable("clock", clock)
    return clock


def check_guard_clock(clock: object) -> ManualClock | None:
    """A guard's injected clock: ``None`` or a :class:`ManualClock`.

    A guard with an injected clock arms no timer (tests call ``run_due``),
    so a plain callable, say ``time.monotonic`` passed in production, would
    turn off every deadline without a word: refused.
    """
    if clock is None or isinstance(clock, ManualClock):
        return clock
    check_clock(clock)  # a non-callable gets the plain message
    raise ConfigurationError(
        "Guard(clock=...) arms no timer (deadlines run only when a test calls "
        "guard.scheduler.run_due()), so it takes a ws_guard.testing.ManualClock, "
        f"not {clock!r}; leave it out to run on the event loop's clock"
    )


def check_random_source(source: object) -> random.Random | None:
    """``None`` or a :class:`random.Random` (a seeded one, ``SystemRandom``, a subclass)."""
    if source is not None and not isinstance(source, random.Random):
        raise ConfigurationError(f"random_source must be a random.Random, not {source!r}")
    return source
