"""JSON a client sent, read as a value or as a reason it cannot be read; never an exception.

``json.loads`` raises more than ``JSONDecodeError`` on hostile input, and
none of it may escape into an app's ``receive()``:

- ``RecursionError`` on a few KB of nesting (``[[[...]]]``, ``{"a":{"a":...}}``):
  the C scanner recurses once per level, up to the interpreter's recursion
  limit (1000 by default, less the stack already in use);
- a plain ``ValueError`` for an integer literal longer than
  ``sys.get_int_max_str_digits()`` (4300 digits by default, Python 3.11+);
- ``UnicodeDecodeError`` (a ``ValueError``) for bytes that are not UTF-8.

It also accepts ``NaN``, ``Infinity`` and ``-Infinity``, which RFC 8259
section 6 does not allow in JSON; they are refused here, so a stricter parser
behind the app never sees them.
"""

from __future__ import annotations

import enum
import json
from typing import Any


class Unreadable(enum.Enum):
    """Why :func:`read_json` returned no value."""

    #: Not JSON at all: a syntax error, bytes that are not UTF-8, no payload.
    NOT_JSON = "not_json"
    #: JSON in shape, refused: nested past the recursion limit, an integer
    #: literal past the digit limit, ``NaN``/``Infinity``.
    REFUSED = "refused"


class _RefusedConstant(ValueError):
    """``NaN``/``Infinity``: Python's extension, not JSON (RFC 8259 section 6)."""


def _refuse_constant(name: str) -> Any:
    raise _RefusedConstant(name)


# Immutable once built: a shared decoder saves building one per message.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def read_json(payload: object) -> Any:
    """The JSON value of *payload* (``str``, or ``bytes`` as UTF-8), or an :class:`Unreadable`.

    Never raises, whatever *payload* holds.
    """
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            return Unreadable.NOT_JSON
    if not isinstance(payload, str):
        return Unreadable.NOT_JSON
    try:
        return _DECODER.decode(payload)
    except json.JSONDecodeError:
        return Unreadable.NOT_JSON
    except (ValueError, RecursionError):  # too long an integer, NaN/Infinity, too deep
        return Unreadable.REFUSED
