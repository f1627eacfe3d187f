"""One compiled function for a run of built-in message rules.

On CPython 3.11 a Python call costs 700-1,000 machine instructions and each
value a closure carries costs more on every call, on a message path whose
whole budget (5 % of an echo's ~127 000 instructions) is some 6 000. A run of
enforcing built-in rules, in the order

    JWTAuth (its refresh test) -> MaxMessageSize -> MessageTypes -> Content...
    -> MessageRate (per connection, one rate)

(any of them may be missing), is therefore written out as Python source once
per guard, with the limits as literals and only the branches this run needs,
and compiled (as :mod:`dataclasses` does for ``__init__``). Two functions come
out of it:

- ``check(conn, message)``: the run as one message check (a verdict).
- ``receive(conn)``: when the run leads the guard's plan, the connection's
  whole receive path with the run inlined, so the common message costs one
  wrapper coroutine and no check call at all.

Per-connection state (the rate window, the auth session's check) lives in
slots of the :class:`~ws_guard._core.connection.Connection`. Any other order, and
any rule in shadow mode, is checked rule by rule. The decisions are the same
either way: the first breach in rule order wins, a consumed message goes no
further, and a rate counts only the messages the rules before it let through.
``tests/test_fuse.py`` checks both functions property-wise against
rule-by-rule checks; ``FusedRun.source`` shows the generated code.
"""

from __future__ import annotations

import itertools
import linecache
import time
import weakref
from collections.abc import Callable, Sequence
from types import MethodType
from typing import TYPE_CHECKING, Any

from ws_guard.rules.auth.jwt import JWTAuth
from ws_guard.rules.auth.session import refresh_session
from ws_guard.rules.base import Checker, Rule, Verdict
from ws_guard.rules.keys import by_connection
from ws_guard.rules.limits.message_rate import MessageRate
from ws_guard.rules.messages import Content, MaxMessageSize, MessageTypes
from ws_guard.types import Message, Receive

if TYPE_CHECKING:
    from ws_guard._core.connection import Connection

_AUTH, _SIZE, _TYPES, _CONTENT, _RATE = range(5)

#: A rate window's end before its first message: shared, not one float per connection.
_NEVER = float("-inf")

#: Distinct file names for the generated code, so tracebacks show its source.
_serial = itertools.count(1)


def _phase(rule: Rule) -> int | None:
    """Where *rule* may stand in a fused run, or None when it cannot join one."""
    if not rule.enforce:
        return None  # a shadow breach must not stop the rules after it
    kind = type(rule)
    if kind is JWTAuth:
        return _AUTH
    if kind is MaxMessageSize:
        return _SIZE
    if kind is MessageTypes:
        return _TYPES
    if isinstance(rule, Content) and type(rule).checker is Content.checker:
        return _CONTENT  # Pattern, Json, and subclasses that keep Content's checker
    if (
        isinstance(rule, MessageRate)
        and kind is MessageRate
        and rule.key is by_connection
        and len(rule.rates) == 1
    ):
        return _RATE
    return None


def plan_checks(
    rules: Sequence[Rule], clock: Callable[[], float] = time.monotonic
) -> tuple[PlanItem, ...]:
    """The rules with checkers, runs of fusable ones replaced by one item.

    *clock* is what a fused rate reads (the guard scheduler's). Only one run
    keeps a rate window (the connection has one set of slots for it); a
    second per-connection rate is checked on its own.
    """
    plan: list[PlanItem] = []
    run: list[Rule] = []
    last = -1
    rate_fused = False

    def flush() -> None:
        # A lone rule checks itself as cheaply as a run of one would, except
        # at the head of the plan, where a run is inlined into receive.
        if len(run) == 1 and plan:
            plan.append(run[0])
        elif run:
            plan.append(FusedRun(run, clock))
        run.clear()

    for rule in rules:
        if type(rule) is MessageTypes and rule.check is None:
            continue  # text and binary both allowed: nothing to check
        phase = _phase(rule)
        if phase == _RATE:
            if rate_fused:
                phase = None
            rate_fused = True
        if phase is None:
            flush()
            last = -1
            plan.append(rule)
            continue
        if phase < last or (phase == last and phase != _CONTENT):
            flush()
        run.append(rule)
        last = phase
    flush()
    if plan and isinstance(plan[0], FusedRun):
        plan[0].lead(followed=len(plan) > 1)
    return tuple(plan)


class FusedRun:
    """A run of fusable rules, compiled into one check (and one receive if it leads)."""

    __slots__ = ("__weakref__", "_check", "_code", "_count_rate", "_receive", "auth", "rate")

    def __init__(self, run: Sequence[Rule], clock: Callable[[], float] = time.monotonic) -> None:
        self.auth: JWTAuth | None = None
        self.rate: MessageRate | None = None
        size: MaxMessageSize | None = None
        types: MessageTypes | None = None
        contents: list[Content] = []
        for rule in run:
            if isinstance(rule, JWTAuth):
                self.auth = rule
            elif isinstance(rule, MessageRate):
                self.rate = rule
            elif isinstance(rule, MaxMessageSize):
                size = rule
            elif isinstance(rule, MessageTypes):
                types = rule
            elif isinstance(rule, Content):
                contents.append(rule)
        self._code = _Code(self.auth, size, types, contents, self.rate, clock)
        # The generated source stays readable for tracebacks while the run lives.
        weakref.finalize(self, _forget, self._code.files)
        self._check: Callable[..., Verdict] = self._code.compile("check")
        self._receive: Callable[..., Any] | None = None
        self._count_rate = None if self.rate is None else _rate_counter(self.rate, clock)

    def lead(self, *, followed: bool) -> None:
        """This run is the plan's first item: also compile its receive path.

        *followed*: more checks come after the run (``Connection._check``).
        """
        self._receive = self._code.compile("receive", followed=followed)

    @property
    def source(self) -> str:
        """The generated code, for reading (tracebacks show it too)."""
        return "\n".join(self._code.sources)

    def bind(self, conn: Connection) -> None:
        """Set up *conn*'s state for this run: the auth session's check, the rate window."""
        if self.auth is not None:
            conn._auth_every = conn._auth_refresh = None
            prefilter = self.auth.refresh_prefilter(conn)
            if prefilter is not None:
                conn._auth_refresh = prefilter[1]
            else:
                conn._auth_every = self.auth.checker(conn)
        if self.rate is not None:
            conn._rate_end = _NEVER
            conn._rate_count = 0
            session = refresh_session(conn)
            if session is not None and self._count_rate is not None:
                # A refresh is consumed before the rate's lines run: it counts here.
                session.rates += (MethodType(self._count_rate, conn),)

    def checker(self, conn: Connection) -> Checker:
        """The run as one check on *conn*."""
        self.bind(conn)
        return MethodType(self._check, conn)

    def check(self, conn: Connection, message: Message) -> Verdict:
        """The run's decision on *message* (for a connection bound to it)."""
        return self._check(conn, message)

    def receiver(self, conn: Connection) -> Receive:
        """*conn*'s receive with this run inlined."""
        if self._receive is None:
            raise RuntimeError("only the plan's first item has a receive path")
        self.bind(conn)
        return MethodType(self._receive, conn)


#: What a connection's checks are built from: each item's ``checker(conn)``.
PlanItem = Rule | FusedRun


class _Code:
    """Writes and compiles a fused run's source.

    The generated function's globals hold the objects it needs (breach
    decisions, content predicates, the clock); numbers are literals. A
    refusal is written through ``refuse``, which differs between the two
    forms: ``check`` returns the verdict, ``receive`` hands the message and
    its verdict to ``Connection._receive_slow``.
    """

    def __init__(
        self,
        auth: JWTAuth | None,
        size: MaxMessageSize | None,
        types: MessageTypes | None,
        contents: Sequence[Content],
        rate: MessageRate | None,
        clock: Callable[[], float],
    ) -> None:
        self.auth, self.size, self.types, self.rate = auth, size, types, rate
        self.contents = tuple(contents)
        self.names: dict[str, Any] = {}
        #: The compiled sources, and the names linecache holds them under.
        self.sources: list[str] = []
        self.files: list[str] = []
        if size is not None:
            self.names["SIZE_BREACH"] = size._breach
        if types is not None:
            self.names["TYPES_BREACH"] = types._breach
        for i, content in enumerate(self.contents):
            self.names[f"ALLOWED_{i}"] = content.allowed
            self.names[f"BREACH_{i}"] = content._breach
            self.names[f"FAILED_{i}"] = content.failed
        payload_rules = (size, types, *self.contents)
        self.names["BY_RULE"] = _by_rule(
            tuple(r.check for r in payload_rules if r is not None and r.check is not None)
        )
        self.needle = auth._refresh_needle if auth is not None else None
        self.names["NEEDLE"] = self.needle
        if rate is not None:
            self.names["CLOCK"] = clock
            self.names["DENY"] = rate._deny

    # -- the checks, as lines at an indent, with a form's way to refuse ----------
    @property
    def reads_payload(self) -> bool:
        payload = (self.needle, self.size, self.types)
        return bool(self.contents) or any(part is not None for part in payload)

    def body(self, refuse: Callable[[str], str], *, text_read: bool = False) -> list[str]:
        """The checks; *text_read*: ``text = message.get('text')`` ran already."""
        out: list[str] = []
        if self.auth is not None:
            out += [
                "auth = self._auth_every",
                "if auth is not None:",
                "    verdict = auth(message)",
                "    if verdict is not None:",
                f"        {refuse('verdict')}",
            ]
        if self.reads_payload:
            if not text_read:
                out += ["text = message.get('text')"]
            out += ["if text is not None:"]
            out += _indent(self._text(refuse))
            out += ["else:", "    data = message.get('bytes')", "    if data is None:"]
            out += _indent(self._neither(refuse), 2)
            out += ["    else:"]
            out += _indent(self._bytes(refuse), 2)
        if self.rate is not None:
            limit, window = self.rate.rates[0].limit, self.rate.rates[0].window
            out += [
                "t = CLOCK()",
                "if t >= self._rate_end:",
                f"    self._rate_end = t + {window!r}",
                "    self._rate_count = 1",
                "else:",
                "    count = self._rate_count",
                f"    if count < {limit!r}:",
                "        self._rate_count = count + 1",
                "    else:",
                f"        {refuse('DENY(self._rate_end - t)')}",
            ]
        return out

    def _text(self, refuse: Callable[[str], str]) -> list[str]:
        out: list[str] = []
        if self.needle is not None:
            out += [
                "if NEEDLE in text:",  # most messages are no refresh: one substring test
                "    auth = self._auth_refresh",
                "    if auth is not None:",
                "        verdict = auth(message)",
                "        if verdict is not None:",
                f"            {refuse('verdict')}",
            ]
        if self.size is not None:
            limit = self.size.max_bytes
            # Text this short fits even at 4 bytes a character: no encode.
            out += [
                "size = len(text)",
                f"if size > {limit >> 2} and (size > {limit} or "
                f"len(text.encode('utf-8', 'surrogatepass')) > {limit}):",
                f"    {refuse('SIZE_BREACH')}",
            ]
        if self.types is not None and not self.types.text:
            return [*out, refuse("TYPES_BREACH")]
        out += self._contents("text", refuse)
        return out or ["pass"]

    def _bytes(self, refuse: Callable[[str], str]) -> list[str]:
        out: list[str] = []
        if self.size is not None:
            out += [f"if len(data) > {self.size.max_bytes}:", f"    {refuse('SIZE_BREACH')}"]
        if self.types is not None and not self.types.binary:
            return [*out, refuse("TYPES_BREACH")]
        out += self._contents("data", refuse)
        return out or ["pass"]

    def _neither(self, refuse: Callable[[str], str]) -> list[str]:
        # Neither payload is not valid ASGI: the payload rules decide one by one.
        return [
            "verdict = BY_RULE(message)",
            "if verdict is not None:",
            f"    {refuse('verdict')}",
        ]

    def _contents(self, payload: str, refuse: Callable[[str], str]) -> list[str]:
        out: list[str] = []
        for i in range(len(self.contents)):
            # As Content's own check: a raising check is the user's bug, 1011
            # (FAILED logs the traceback). The refusal stays outside the try,
            # so nothing _receive_slow raises is mistaken for the check's.
            out += [
                "try:",
                f"    verdict = None if ALLOWED_{i}({payload}) else BREACH_{i}",
                "except Exception:",
                f"    verdict = FAILED_{i}()",
                "if verdict is not None:",
                f"    {refuse('verdict')}",
            ]
        return out

    # -- the two forms ------------------------------------------------------------
    def text(self, form: str, *, followed: bool = False) -> str:
        from ws_guard._core.states import OPEN

        if form == "check":
            lines = ["def check(self, message):"]
            lines += _indent([*self.body(lambda v: f"return {v}"), "return None"])
            return "\n".join(lines) + "\n"

        def refuse(verdict: str) -> str:
            return f"return await self._receive_slow(message, {verdict})"

        rest = (
            [
                "check = self._check",
                "if check is not None:",
                "    verdict = check(message)",
                "    if verdict is not None:",
                f"        {refuse('verdict')}",
            ]
            if followed
            else []
        )
        # The server's receive is read into a local first: a call straight
        # off the slot is a method lookup the interpreter cannot specialise.
        # Early returns keep every jump short: CPython 3.11 leaves a
        # comparison unspecialised when its jump needs an EXTENDED_ARG.
        lines = [
            "async def receive(self):",
            f"    if self.state != {OPEN} or self._hold is not None:",
            "        return await self._receive_slow(None, UNCHECKED)",
            "    server_receive = self._receive",
            "    message = await server_receive()",
            f"    if self.state != {OPEN}:",
            "        return await self._receive_slow(message, UNCHECKED)",
        ]
        if self.reads_payload:
            # Only a websocket.receive event carries a payload (ASGI), so a
            # text message needs no type test: one dict lookup less.
            lines += [
                "    text = message.get('text')",
                "    if text is None and message['type'] != 'websocket.receive':",
                "        return await self._receive_slow(message, UNCHECKED)",
            ]
        else:
            lines += [
                "    if message['type'] != 'websocket.receive':",
                "        return await self._receive_slow(message, UNCHECKED)",
            ]
        lines += _indent([*self.body(refuse, text_read=True), *rest, "return message"])
        return "\n".join(lines) + "\n"

    def compile(self, form: str, *, followed: bool = False) -> Callable[..., Any]:
        from ws_guard._core.connection import _UNCHECKED

        source = self.text(form, followed=followed)
        filename = f"<ws_guard fused {form} {next(_serial)}>"
        # Registered so that a traceback through the generated code shows it.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        self.sources.append(source)
        self.files.append(filename)
        namespace = dict(self.names, UNCHECKED=_UNCHECKED)
        # Our own source, written above from the run's rules; no user text in it.
        exec(compile(source, filename, "exec"), namespace)
        function: Callable[..., Any] = namespace[form]
        return function


def _rate_counter(
    rate: MessageRate, clock: Callable[[], float]
) -> Callable[[Connection, Message], Verdict]:
    """The fused rate's arithmetic on its own, on the same connection slots.

    For a message a check ahead of the rate consumes but that must still
    count (an in-band token refresh); the generated code does the same sums.
    """
    limit, window = rate.rates[0].limit, rate.rates[0].window
    deny = rate._deny

    def count(conn: Connection, message: Message) -> Verdict:
        t = clock()
        if t >= conn._rate_end:
            conn._rate_end = t + window
            conn._rate_count = 1
            return None
        taken = conn._rate_count
        if taken < limit:
            conn._rate_count = taken + 1
            return None
        return deny(conn._rate_end - t)

    return count


def _forget(files: list[str]) -> None:
    for filename in files:
        linecache.cache.pop(filename, None)


def _indent(lines: list[str], levels: int = 1) -> list[str]:
    pad = "    " * levels
    return [pad + line for line in lines]


def _by_rule(checks: tuple[Checker, ...]) -> Checker:
    def by_rule(message: Message) -> Verdict:
        for check in checks:
            verdict = check(message)
            if verdict is not None:
                return verdict
        return None

    return by_rule
