"""Message kinds: which messages a per-kind limit (``MessageRate(match=...)``) counts.

A kind is a predicate of the ASGI ``websocket.receive`` message dict
(``{"type": "websocket.receive", "text": ...}`` or ``..."bytes": ...``).
:func:`json_type` builds the common one: a JSON object whose ``"type"``
field (or another field) equals a value. Several ``json_type`` kinds in one
guard parse a message at most once between them (:class:`LastParse`), and a
message that cannot hold the value is not parsed at all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ws_guard._json import Unreadable, read_json
from ws_guard._validate import check_sync_callable
from ws_guard.errors import ConfigurationError
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard._core.decisions import Close
    from ws_guard.rules.context import Checker, RuleContext, Verdict

#: A kind's name, as it appears in the close reason ``rate_limited:<name>``.
_KIND_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

#: What ``MessageRate(match=...)`` takes: true for the messages the rate counts.
Match = Callable[[Message], Any]


def check_kind_name(rule: str, name: object) -> str:
    """A per-kind rule's ``name``: 1-64 ASCII letters, digits, ``_``, ``-`` or ``.``.

    It is sent in the close reason, so it stays short and plain: with the
    longest name and hint, ``rate_limited:<name>; retry-after=<seconds>`` stays far
    below the 123 bytes a close reason may hold.
    """
    if not isinstance(name, str) or not _KIND_NAME.fullmatch(name):
        raise ConfigurationError(
            f"{rule} with match= needs name=, 1-64 ASCII letters, digits, '_', '-' or '.', "
            f"not {name!r}"
        )
    return name


def check_match(rule: str, match: object) -> Match:
    """*match*, checked to be a callable of one message."""
    if not callable(match):
        raise ConfigurationError(f"{rule} match must be a callable of the message, not {match!r}")
    check_sync_callable(f"{rule} match", match)
    return match


class LastParse:
    """One connection's last parsed payload: the JSON kinds of a guard share it.

    A payload is the same object for every rule that looks at one message,
    so an identity test finds it; holding it keeps that identity from being
    reused by a later payload. The last kind to look at a message lets it
    go (sets both back to ``None``), so an idle connection does not keep its
    last message alive.
    """

    __slots__ = ("kinds", "payload", "value")

    def __init__(self) -> None:
        self.payload: object = None
        self.value: Any = None
        #: How many kinds of the connection share this parse, in check order.
        self.kinds = 0

    def join(self) -> int:
        """Register one more kind; returns its place (the last one releases)."""
        self.kinds += 1
        return self.kinds

    def __call__(self, payload: object) -> Any:
        """``read_json(payload)``, parsed once per payload."""
        if payload is self.payload:
            return self.value
        value = read_json(payload)
        self.payload = payload
        self.value = value
        return value


class JsonField:
    """True for a message that is a JSON object whose *field* equals *value*.

    A limit must count every message the app would read as the kind, so
    the test reads a message as ``json.loads`` (what a Python app most
    likely parses it with) would, never more strictly:

    - text and binary frames alike, so a client cannot dodge the limit by
      sending the same JSON in a binary frame; binary frames as
      ``json.loads(bytes)`` decodes them (``json.detect_encoding``: UTF-8,
      a UTF-8 byte order mark, UTF-16 or UTF-32), the common UTF-8 frame
      told apart by its first four bytes;
    - JSON that ws_guard's own reading refuses (``ws_guard._json``: nested
      deeper than 64 levels, ``NaN``/``Infinity``) is read again by
      ``json.loads`` itself, on the same Python as the app, which takes
      both: ``{"type": "chat", "x": NaN}`` is a chat.

    A payload that holds neither the value spelled out (``"chat"``) nor a
    backslash cannot decode to it and is not parsed. What ``json.loads``
    cannot read either is no match; nothing here raises for any input.
    """

    __slots__ = ("_bytes_needle", "field", "text_needle", "value")

    def __init__(self, value: str, field: str = "type") -> None:
        if not isinstance(value, str) or not isinstance(field, str):
            raise ConfigurationError(
                f"json_type value and field must be strings, not {value!r} and {field!r}"
            )
        self.value = value
        self.field = field
        #: Without escapes, a JSON string equal to value is written exactly so.
        self.text_needle = json.dumps(value, ensure_ascii=False)
        self._bytes_needle = self.text_needle.encode("utf-8", "surrogatepass")

    def __repr__(self) -> str:
        return f"json_type({self.value!r}, field={self.field!r})"

    def __call__(self, message: Message) -> bool:
        return self.matches(message, read_json)

    def matches(self, message: Message, parse: Callable[[object], Any]) -> bool:
        """The test, with *parse* reading the payload (a :class:`LastParse` shares it)."""
        payload = message.get("text")
        if payload is not None:
            if self.text_needle not in payload and "\\" not in payload:
                return False
        else:
            payload = message.get("bytes")
            if payload is None:
                return False
            if not payload[:1].isascii() or b"\x00" in payload[:4]:
                # A byte order mark starts with a non-ASCII byte; UTF-16 and
                # UTF-32 JSON without one has a NUL in its first four bytes.
                return self._is_value(_as_json_loads_reads(payload))
            if self._bytes_needle not in payload and b"\\" not in payload:
                return False
        value = parse(payload)
        if value is Unreadable.REFUSED:  # too deep or NaN for ws_guard, maybe not for the app
            value = _as_json_loads_reads(payload)
        return self._is_value(value)

    def _is_value(self, value: object) -> bool:
        return isinstance(value, dict) and value.get(self.field) == self.value


def _as_json_loads_reads(payload: str | bytes) -> Any:
    """*payload* as ``json.loads`` reads it; ``None`` when it cannot.

    Only for a kind's match: refusing is ``ws_guard._json``'s job. Nesting
    deep enough to exhaust the stack is a ``RecursionError`` here as in the
    app; an over-long integer a ``ValueError``, as it is there.
    """
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return None


def json_type(value: str, *, field: str = "type") -> JsonField:
    """A kind for ``MessageRate(match=...)``: JSON objects whose *field* equals *value*.

    ``rules.json_type("chat")`` matches ``{"type": "chat", ...}`` in a text
    or binary frame; ``ConfigurationError`` when *value* or *field* is not a string.
    """
    return JsonField(value, field)


def kind_check(
    conn: RuleContext, match: Match, count: Checker, failed: Callable[[], Close]
) -> Checker:
    """*count* for the messages *match* accepts; the others pass uncounted.

    A predicate that raises is a bug in it, never "no match" (which would
    switch the limit off): the check returns ``failed()``, called in the
    ``except`` so it can log the traceback.
    """
    if isinstance(match, JsonField):
        return _json_kind_check(conn, match, count)

    def check(message: Message) -> Verdict:
        try:
            if not match(message):
                return None
        except Exception:  # noqa: BLE001 - the user's predicate is broken: failed() logs it
            return failed()
        return count(message)

    return check


def _json_kind_check(conn: RuleContext, kind: JsonField, count: Checker) -> Checker:
    """*count* for the messages of JSON *kind*, with the parse the kinds of *conn* share.

    A text that holds neither the value as written nor a backslash is
    decided here, without a call (the common message of another kind).
    ``kind.matches`` never raises. Checks are built in the order they run,
    so the kind built last is the last to see a message: it lets the
    shared parse go once it decided, so an idle connection keeps no payload.
    """
    parse = conn.extra.get(LastParse)
    if parse is None:
        parse = conn.extra[LastParse] = LastParse()
    place = parse.join()
    needle = kind.text_needle
    matches = kind.matches

    def check(message: Message) -> Verdict:
        text = message.get("text")
        if text is not None and needle not in text and "\\" not in text:
            hit = False
        else:
            hit = matches(message, parse)
        if place == parse.kinds and parse.payload is not None:
            parse.payload = parse.value = None
        return count(message) if hit else None

    return check
