"""What a built-in message rule is, as data the engine's fast path can run.

A rule whose message check is one of these shapes returns it from
``Rule.fast_check()``; the fast path (``ws_guard._core.fast_path``) runs a
run of such rules as one function call per message, reading the numbers
and predicates from these records. A rule that returns ``None`` (the
default) is asked for its ``checker(ctx)`` and checked on its own. The
decisions are the same either way: ``tests/unit/core/test_fast_path.py`` compares them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ws_guard._core.decisions import Close
    from ws_guard.rules.context import Checker, RuleContext


@dataclass(frozen=True, slots=True)
class SizeLimit:
    """Close with *breach* when a payload is longer than *max_bytes* (text in UTF-8 bytes)."""

    max_bytes: int
    breach: Close


@dataclass(frozen=True, slots=True)
class TypeFilter:
    """Close with *breach* on a frame of a type not allowed (a message with neither payload too)."""

    text: bool
    binary: bool
    breach: Close


@dataclass(frozen=True, slots=True)
class ContentTest:
    """Close with *breach* when ``allowed(payload)`` is false; with ``failed()`` when it raises.

    The payload is ``str`` for text, ``bytes`` for binary, ``None`` for a
    message with neither (not valid ASGI, decided all the same).
    """

    allowed: Callable[[Any], bool]
    breach: Close
    failed: Callable[[], Close]


@dataclass(frozen=True, slots=True)
class SingleRate:
    """At most *limit* messages per fixed window of *window* seconds, per connection.

    The window opens at the first message (``limits``' fixed window);
    ``deny(seconds_left)`` is the close for a message past the limit.
    ``share(ctx, count)`` hands the connection's counting check to a rule
    that consumes messages before the rate sees them (an in-band token
    refresh still counts as a message).
    """

    limit: int
    window: float
    deny: Callable[[float], Close]
    share: Callable[[RuleContext, Checker], None]


@dataclass(frozen=True, slots=True)
class AuthCheck:
    """An auth rule's per-connection checks, and the text that marks a refresh.

    ``checks(ctx)`` gives ``(every, marked)``: *every* sees every message,
    *marked* only a text message containing *needle* (one substring test
    decides that most messages are no refresh). Either may be ``None``.
    """

    needle: str | None
    checks: Callable[[RuleContext], tuple[Checker | None, Checker | None]]


#: What ``Rule.fast_check()`` may return.
FastCheck = AuthCheck | SizeLimit | TypeFilter | ContentTest | SingleRate


def refresh_needle(refresh: str) -> str:
    """The refresh message's type as it appears in its JSON text: ``'"auth.refresh"'``.

    A text message without it is no refresh of that type, whatever else it holds.
    """
    return json.dumps(refresh)
