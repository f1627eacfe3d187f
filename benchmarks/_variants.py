"""Guard variants the benchmarks compare against the bare app.

Each variant is a factory that builds a fresh :class:`ws_guard.Guard` inside
the process that serves (the echo server subprocess, or the in-process
driver of ``per_message.py``), plus what a client must add to its URL.

To add a variant, write a ``_build_<name>`` function and add one
``Variant(...)`` line to ``VARIANTS``. Variants that need a rule not yet in
ws_guard are listed in the comment at the bottom and added when it lands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Benchmark this checkout's ws_guard, not whatever copy is installed.
SRC = str(Path(__file__).resolve().parent.parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from ws_guard import Guard, rules  # noqa: E402

#: The message-size limit of the ``rules`` variant (far above any benchmark message).
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Variant:
    """A guard configuration under test."""

    description: str
    build: Callable[[], Guard]
    #: Query string (without ``?``) for client connection ``i``, e.g. a JWT per user.
    client_query: Callable[[int], str] | None = None


def _message_rules() -> list[rules.Rule]:
    """The three message rules of the foundation benchmark (all pass on echo traffic)."""
    return [
        rules.MaxMessageSize(MAX_MESSAGE_BYTES),
        rules.MessageTypes(text=True, binary=False),
        rules.Content(lambda m: "http://" not in m, name="no_links"),
    ]


def _build_rules() -> Guard:
    return Guard(rules=_message_rules())


VARIANTS: dict[str, Variant] = {
    "none": Variant("Guard() with no rules: the middleware's own fixed cost", Guard),
    "rules": Variant(
        "MaxMessageSize(64 KiB) + MessageTypes(text only) + Content(no 'http://')",
        _build_rules,
    ),
    # Add variants here as their rules land on main, for example:
    #   "rate":      rules + MessageRate("1000000/second")                (per connection)
    #   "rate_ip":   rules + MessageRate("1000000/second", key=by_ip)     (memory storage)
    #   "rate_user": rules + MessageRate(..., key=by_user) on
    #                Guard(storage=os.environ["WS_GUARD_BENCH_REDIS"]) + JWTAuth, with
    #                client_query=lambda i: f"token={token_for(f'user{i % 10}')}"
    #   "jwt":       rules + JWTAuth(SECRET, algorithms=["HS256"], token=from_query("token")),
    #                client_query=lambda i: f"token={token_for(f'user{i}')}"
    # Limits must be far above the benchmark's rate: the benchmark measures the
    # cost of checking, not of closing.
}


def variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise SystemExit(
            f"unknown guard variant {name!r}; choose from {', '.join(VARIANTS)}"
        ) from None
