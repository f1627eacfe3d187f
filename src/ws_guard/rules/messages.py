"""Rules that look at each client message: size, type, content.

Each returns a checker that is plain arithmetic on the message in hand, so
the message path costs a few attribute reads per rule.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ws_guard._core.decisions import Close
from ws_guard._json import Unreadable, read_json
from ws_guard._validate import check_count, check_sync_callable
from ws_guard.codes import (
    INTERNAL_ERROR,
    MESSAGE_TOO_BIG,
    POLICY_VIOLATION,
    REASON_CONTENT_PREFIX,
    REASON_INTERNAL_ERROR,
    REASON_MESSAGE_TOO_BIG,
    REASON_UNSUPPORTED_DATA,
    UNSUPPORTED_DATA,
)
from ws_guard.errors import ConfigurationError
from ws_guard.rules.base import Rule
from ws_guard.rules.context import Checker
from ws_guard.rules.fast import ContentTest, SizeLimit, TypeFilter
from ws_guard.rules.regex import compile_search
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext

logger = logging.getLogger("ws_guard")

_RULE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _check_content_name(name: object) -> str:
    if not isinstance(name, str) or not _RULE_NAME.fullmatch(name):
        raise ConfigurationError(
            f"content rule name must be 1-64 ASCII letters, digits, '_', '-' or '.', not {name!r}"
        )
    return name


class MaxMessageSize(Rule):
    """Close with 1009 ``message_too_big`` when a message exceeds ``max_bytes``.

    Text is measured in UTF-8 bytes, exactly; the encode only happens for
    text whose character count alone cannot decide.
    """

    def __init__(self, max_bytes: int, *, enforce: bool = True, name: str | None = None) -> None:
        max_bytes = check_count("MaxMessageSize max_bytes", max_bytes)
        super().__init__(enforce=enforce, name=name)
        self.max_bytes = max_bytes
        self._breach = self.breach(MESSAGE_TOO_BIG, REASON_MESSAGE_TOO_BIG)
        #: The message check, a closure over plain locals: it runs on every
        #: message, and local reads are cheaper than attribute lookups.
        self.check: Checker = _size_check(max_bytes, self._breach)

    def checker(self, conn: RuleContext) -> Checker:
        return self.check

    def fast_check(self) -> SizeLimit:
        return SizeLimit(self.max_bytes, self._breach)


def _size_check(limit: int, breach: Close) -> Checker:
    quarter = limit >> 2  # text this short fits even at 4 bytes a character

    def check(message: Message) -> Close | None:
        text = message.get("text")
        if text is not None:
            size = len(text)
            if size <= quarter:
                return None
            if size > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
                return breach
            return None
        data = message.get("bytes")
        if data is not None and len(data) > limit:
            return breach
        return None

    return check


class MessageTypes(Rule):
    """Close with 1003 ``unsupported_data`` on a frame type the endpoint refuses."""

    def __init__(
        self,
        *,
        text: bool = True,
        binary: bool = True,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        if not isinstance(text, bool) or not isinstance(binary, bool):
            raise ConfigurationError(
                f"MessageTypes text/binary must be booleans, not {text!r}/{binary!r}"
            )
        if not text and not binary:
            raise ConfigurationError(
                "MessageTypes(text=False, binary=False) would refuse every message"
            )
        super().__init__(enforce=enforce, name=name)
        self.text = text
        self.binary = binary
        self._breach = self.breach(UNSUPPORTED_DATA, REASON_UNSUPPORTED_DATA)

        if text and binary:
            self.check: Checker | None = None
        elif text:
            self.check = _needs_key("text", self._breach)
        else:
            self.check = _needs_key("bytes", self._breach)

    def checker(self, conn: RuleContext) -> Checker | None:
        return self.check

    def fast_check(self) -> TypeFilter:
        return TypeFilter(self.text, self.binary, self._breach)


def _needs_key(key: str, breach: Close) -> Checker:
    def check(message: Message) -> Close | None:
        return breach if message.get(key) is None else None

    return check


class Content(Rule):
    """Close with 1008 ``content:<name>`` when ``check(payload)`` returns False.

    ``check`` gets the payload: ``str`` for text frames, ``bytes`` for binary.
    It runs on every message, so keep it cheap. An exception in it is a bug
    in the check, not the client's fault, and never taken as "allowed": the
    connection closes 1011 ``internal_error`` (counted under this rule's
    label), the traceback is logged at ERROR once per rule (in shadow mode
    every message would log one), and the exception does not reach the app.
    """

    def __init__(self, check: Callable[[Any], bool], *, name: str, enforce: bool = True) -> None:
        if not callable(check):
            raise ConfigurationError(f"Content check must be callable, not {check!r}")
        check_sync_callable("Content check", check)
        self.content_name = _check_content_name(name)
        super().__init__(enforce=enforce, name=f"{REASON_CONTENT_PREFIX}{name}")
        self.allowed = check
        self._breach = self.breach(POLICY_VIOLATION, f"{REASON_CONTENT_PREFIX}{name}")
        self._failed = self.breach(INTERNAL_ERROR, REASON_INTERNAL_ERROR)
        self._failure_logged = False
        self.check: Checker = _content_check(check, self._breach, self.failed)

    def checker(self, conn: RuleContext) -> Checker:
        return self.check

    def fast_check(self) -> ContentTest:
        return ContentTest(self.allowed, self._breach, self.failed)

    def failed(self) -> Close:
        """The decision when ``check`` raised (called in its ``except``: logs the traceback).

        Logged once per rule: a client triggers it with every message that
        breaks the check, and in shadow mode the connection lives on to
        send the next. Each failure is still counted under the rule.
        """
        if not self._failure_logged:
            self._failure_logged = True
            logger.exception("ws_guard content rule %r raised; closing 1011", self.content_name)
        return self._failed


def _content_check(
    allowed: Callable[[Any], bool], breach: Close, failed: Callable[[], Close]
) -> Checker:
    def check(message: Message) -> Close | None:
        payload = message.get("text")
        if payload is None:
            payload = message.get("bytes")
        try:
            return None if allowed(payload) else breach  # bool() inside: it may raise too
        except Exception:  # noqa: BLE001 - the user's check is broken: failed() logs it, 1011
            return failed()

    return check


class Pattern(Content):
    """Close with 1008 ``content:<name>`` when a text message matches ``pattern``.

    Binary frames are not searched (a text pattern has no meaning there);
    combine with :class:`MessageTypes` to refuse them.

    ``engine`` picks the regex engine: ``"auto"`` (RE2 from the optional
    google-re2 package when installed and the pattern compiles there, else
    Python's ``re``, with a WARNING naming the pattern), ``"re2"`` (linear
    time; :class:`ConfigurationError` when google-re2 is missing or the
    pattern needs backtracking), or ``"re"`` (backtracking: a crafted message
    can stall the event loop). ``self.engine`` says which one runs.
    """

    def __init__(
        self,
        pattern: str | re.Pattern[str],
        *,
        name: str = "pattern",
        flags: int = 0,
        engine: str = "auto",
        enforce: bool = True,
    ) -> None:
        search, used, compiled = compile_search(pattern, flags, engine)
        #: The engine that runs: "re" or "re2".
        self.engine = used
        #: The compiled ``re.Pattern`` under the re engine, None under RE2.
        self.pattern: re.Pattern[str] | None = compiled
        super().__init__(
            lambda payload: not (isinstance(payload, str) and search(payload)),
            name=name,
            enforce=enforce,
        )


class Json(Content):
    """Close with 1008 ``content:<name>`` unless a message is JSON that ``validator`` accepts.

    Text and binary frames are both parsed (binary as UTF-8 JSON). JSON the
    parser refuses is not JSON here: arrays and objects nested more than 64
    levels deep (on every Python version), an integer literal past
    ``sys.get_int_max_str_digits()``, ``NaN`` and ``Infinity`` (not JSON by
    RFC 8259 section 6).
    """

    def __init__(
        self,
        validator: Callable[[Any], bool] | None = None,
        *,
        name: str = "json",
        enforce: bool = True,
    ) -> None:
        if validator is not None and not callable(validator):
            raise ConfigurationError(f"Json validator must be callable, not {validator!r}")
        check_sync_callable("Json validator", validator)
        self.validator = validator
        super().__init__(self._valid, name=name, enforce=enforce)

    def _valid(self, payload: str | bytes) -> bool:
        # Never raises for the client's input (too deep, too long a number,
        # NaN, not UTF-8: content:<name>); a raising validator is a bug (1011).
        value = read_json(payload)
        if isinstance(value, Unreadable):
            return False
        return True if self.validator is None else bool(self.validator(value))
