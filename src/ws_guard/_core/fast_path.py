"""One call per message for a run of built-in message rules.

A Python call per rule is a large share of the message budget (see
docs/benchmarks.md), so a run of enforcing rules whose checks are data
(``Rule.fast_check()``, :mod:`ws_guard.rules.fast`), in the order

    auth (its refresh test) -> size -> types -> content... -> rate (one, per connection)

(any of them may be missing), is checked by one function,
:meth:`RunState.check`, reading the run's numbers and predicates. Any other
order, and any rule in shadow mode, is checked rule by rule. The decisions
are the same either way: the first breach in rule order wins, a consumed
message goes no further, and a rate counts only the messages the rules
before it let through. ``tests/unit/core/test_fast_path.py`` checks this property-wise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ws_guard.rules.base import Rule
from ws_guard.rules.context import Checker, Verdict
from ws_guard.rules.fast import (
    AuthCheck,
    ContentTest,
    FastCheck,
    SingleRate,
    SizeLimit,
    TypeFilter,
)

if TYPE_CHECKING:
    from ws_guard._core.decisions import Close
    from ws_guard.rules.context import RuleContext
    from ws_guard.types import Message

#: A rate window's end before its first message.
_NEVER = float("-inf")


def fast_check_of(rule: Rule) -> FastCheck | None:
    """*rule*'s fast-path data, or ``None`` when its own ``checker`` must decide.

    A subclass that overrides ``checker`` below the class giving the data
    decides differently (say, per path), so it is asked itself.
    """
    data = rule.fast_check()
    if data is None:
        return None
    kind = type(rule)
    owner = next(cls for cls in kind.__mro__ if "fast_check" in vars(cls))
    return data if kind.checker is owner.checker else None  # type: ignore[attr-defined]


class FusedRun:
    """A run of fast-path rules, checked as one: the data of its rules, in one place."""

    __slots__ = (
        "allowed",
        "auth",
        "auth_check",
        "binary_ok",
        "clock",
        "content",
        "contents",
        "limit",
        "max_bytes",
        "more_contents",
        "needle",
        "quarter",
        "rate",
        "rules",
        "single_rate",
        "size_breach",
        "text_ok",
        "text_state",
        "types_breach",
        "window",
    )

    def __init__(self, run: Sequence[Rule], clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = tuple(run)
        #: The run's auth and rate rules (``None`` when absent), for reading.
        self.auth: Rule | None = None
        self.rate: Rule | None = None
        self.auth_check: AuthCheck | None = None
        #: The auth rule's refresh marker ("" without one: then nothing is marked).
        self.needle = ""
        self.single_rate: SingleRate | None = None
        self.max_bytes: int | None = None
        #: Text of at most this many characters fits the limit (any text without one).
        self.quarter = sys.maxsize
        self.size_breach: Close | None = None
        #: Whether each payload passes the type filter; a filter refuses neither-payload too.
        self.text_ok = self.binary_ok = True
        self.types_breach: Close | None = None
        contents: list[ContentTest] = []
        self.limit = 0
        self.window = 0.0
        self.clock = clock
        for rule in run:
            data = fast_check_of(rule)
            if isinstance(data, AuthCheck):
                self.auth, self.auth_check = rule, data
                self.needle = data.needle or ""
            elif isinstance(data, SizeLimit):
                self.max_bytes = data.max_bytes
                self.quarter = data.max_bytes >> 2  # text this short fits even at 4 bytes a char
                self.size_breach = data.breach
            elif isinstance(data, TypeFilter):
                self.text_ok, self.binary_ok = data.text, data.binary
                self.types_breach = data.breach
            elif isinstance(data, ContentTest):
                contents.append(data)  # several: the first without a loop
            elif isinstance(data, SingleRate):
                self.rate, self.single_rate = rule, data
                self.limit, self.window = data.limit, data.window
            else:
                raise TypeError(f"{rule!r} has no fast-path check to join a run with")
        self.contents = tuple(contents)
        self.content = contents[0] if contents else None
        #: The first content test's predicate, read by the text states (None without one).
        self.allowed = self.content.allowed if self.content is not None else None
        self.more_contents = self.contents[1:] or None
        #: The state of a connection without a check on every message: the
        #: common run written out where it fits (chosen once, here).
        self.text_state: type[RunState] = RunState
        if self.text_ok and len(contents) == 1:
            self.text_state = TextRateState if self.single_rate is not None else TextState

    def __repr__(self) -> str:
        return f"FusedRun({list(self.rules)!r})"

    def checker(self, conn: RuleContext) -> Checker:
        """The run as one check on *conn*, with *conn*'s own state for it."""
        return self.bind(conn).check

    def bind(self, conn: RuleContext) -> RunState:
        """*conn*'s state for this run (its ``check`` is the run's checker)."""
        every: Checker | None = None
        marked: Checker | None = None
        if self.auth_check is not None:
            every, marked = self.auth_check.checks(conn)
        kind = self.text_state if every is None else RunState
        return kind(self, conn, every, marked)


class RunState:
    """One connection's state for a :class:`FusedRun`: the auth checks (and rate window)."""

    __slots__ = ("count", "end", "every", "marked", "rest", "run")

    def __init__(
        self, run: FusedRun, conn: RuleContext, every: Checker | None, marked: Checker | None
    ) -> None:
        self.run = run
        #: The plan's checks after the run, when the run leads: called from
        #: check() itself, so the connection makes one call per message.
        self.rest: Checker | None = None
        #: The auth rule's checks (``AuthCheck.checks``): of every message, of marked text.
        self.every = every
        self.marked = marked
        self.end = _NEVER
        self.count = 0
        if run.single_rate is not None:
            # An in-band refresh is consumed before the rate sees it: it counts here too.
            run.single_rate.share(conn, self.count_one)

    def check(self, message: Message) -> Verdict:
        """The run's decision on *message*: the first breach, ``CONSUME``, or ``None``."""
        run = self.run
        every = self.every
        if every is not None:
            verdict = every(message)
            if verdict is not None:
                return verdict
        payload = text = message.get("text")
        if text is not None:
            marked = self.marked
            if marked is not None and run.needle in text:
                verdict = marked(message)
                if verdict is not None:
                    return verdict
            limit = run.max_bytes
            if limit is not None:
                size = len(text)
                if size > run.quarter and (
                    size > limit or len(text.encode("utf-8", "surrogatepass")) > limit
                ):
                    return run.size_breach
            if not run.text_ok:
                return run.types_breach
        else:
            payload = message.get("bytes")
            if payload is None:
                # Neither payload (not valid ASGI): a type filter refuses it.
                if run.types_breach is not None:
                    return run.types_breach
            else:
                limit = run.max_bytes
                if limit is not None and len(payload) > limit:
                    return run.size_breach
                if not run.binary_ok:
                    return run.types_breach
        test = run.content
        if test is not None:
            # Callables held in attributes are read into locals before the
            # call: see docs/benchmarks.md, "After the redesign".
            allowed = test.allowed
            try:
                if not allowed(payload):  # bool() inside: it may raise too
                    return test.breach
            except Exception:  # noqa: BLE001 - the user's check is broken: failed() logs it, 1011
                return test.failed()
            more = run.more_contents
            if more is not None:  # None, not (): an empty loop costs ~250 instructions
                for test in more:
                    allowed = test.allowed
                    try:
                        if not allowed(payload):
                            return test.breach
                    except Exception:  # noqa: BLE001 - as above
                        return test.failed()
        if run.single_rate is not None:
            # count_one's sums, written out: the rate is on every message's path.
            clock = run.clock
            t = clock()
            if t >= self.end:
                self.end = t + run.window
                self.count = 1
            else:
                count = self.count
                if count >= run.limit:
                    return run.single_rate.deny(self.end - t)
                self.count = count + 1
        rest = self.rest
        if rest is None:
            return None
        return rest(message)

    def count_one(self, message: Message) -> Verdict:
        """Count *message* in the rate window; the rate's close when it is past the limit."""
        run = self.run
        clock = run.clock
        t = clock()
        if t >= self.end:
            self.end = t + run.window
            self.count = 1
            return None
        count = self.count
        if count < run.limit:
            self.count = count + 1
            return None
        return run.single_rate.deny(self.end - t)  # type: ignore[union-attr]


class TextState(RunState):
    """:meth:`RunState.check` for a run that takes text and has one content test.

    The common message written out: text short enough to fit the size
    limit by its length alone, no refresh marker. Any other message, before
    anything is counted, goes to :meth:`RunState.check`. Chosen once per run
    for a connection with no check on every message (``FusedRun.bind``).
    """

    __slots__ = ()

    def check(self, message: Message) -> Verdict:
        text = message.get("text")
        run = self.run
        if text is None or len(text) > run.quarter:
            return RunState.check(self, message)
        marked = self.marked
        if marked is not None and run.needle in text:
            return RunState.check(self, message)
        allowed = run.allowed
        try:
            if not allowed(text):  # type: ignore[misc]  # set: a text state has one
                return run.content.breach  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - as in RunState.check
            return run.content.failed()  # type: ignore[union-attr]
        rest = self.rest
        if rest is None:
            return None
        return rest(message)


class TextRateState(RunState):
    """:class:`TextState` with the run's rate window (``RunState.check``'s sums).

    Its first lines repeat ``TextState.check`` on purpose: a shared method
    would cost a Python call per message, more than these states save.
    """

    __slots__ = ()

    def check(self, message: Message) -> Verdict:
        text = message.get("text")
        run = self.run
        if text is None or len(text) > run.quarter:
            return RunState.check(self, message)
        marked = self.marked
        if marked is not None and run.needle in text:
            return RunState.check(self, message)
        allowed = run.allowed
        try:
            if not allowed(text):  # type: ignore[misc]  # set: a text state has one
                return run.content.breach  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - as in RunState.check
            return run.content.failed()  # type: ignore[union-attr]
        clock = run.clock
        t = clock()
        if t >= self.end:
            self.end = t + run.window
            self.count = 1
        else:
            count = self.count
            if count >= run.limit:
                return run.single_rate.deny(self.end - t)  # type: ignore[union-attr]
            self.count = count + 1
        rest = self.rest
        if rest is None:
            return None
        return rest(message)
