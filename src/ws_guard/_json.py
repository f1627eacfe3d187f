"""JSON a client sent, read as a value or as a reason it cannot be read; never an exception.

``json.loads`` raises more than ``JSONDecodeError`` on hostile input, and
none of it may escape into an app's ``receive()``:

- ``RecursionError`` on a few KB of nesting (``[[[...]]]``, ``{"a":{"a":...}}``):
  the C scanner recurses once per level, up to the interpreter's recursion
  limit (1000 by default, less the stack already in use) on Python 3.10 and
  3.11; from 3.12 on the same input parses. So ws_guard sets its own limit,
  :data:`MAX_DEPTH` levels, the same on every Python;
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
import re
from itertools import accumulate
from typing import Any

#: Arrays and objects nested deeper than this are refused, on every Python.
#: Protocol messages nest a few levels; 64 leaves room and stays far below
#: the depth at which any CPython's scanner runs out of stack.
MAX_DEPTH = 64
#: A JSON string, escapes included: its brackets do not nest. An unclosed
#: string runs to the end of the text (a lone backslash last included), so
#: every opening quote matches at its first try and each character is read
#: once: a closing quote alone would make each escaped quote of a long
#: unclosed string (``"\"\"\"...``) rescan the rest of the text, quadratic
#: (64 KB took 20 s).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class Unreadable(enum.Enum):
    """Why :func:`read_json` returned no value."""

    #: Not JSON at all: a syntax error, bytes that are not UTF-8, no payload.
    NOT_JSON = "not_json"
    #: JSON in shape, refused: nested deeper than the limit, an integer
    #: literal past the digit limit, ``NaN``/``Infinity``.
    REFUSED = "refused"


class _RefusedConstant(ValueError):
    """``NaN``/``Infinity``: Python's extension, not JSON (RFC 8259 section 6)."""


def _refuse_constant(name: str) -> Any:
    raise _RefusedConstant(name)


# Immutable once built: a shared decoder saves building one per message.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON *text* (brackets inside strings do not count).

    Linear in ``len(text)``; the loops run in C (``re``, ``map``, ``accumulate``).
    """
    brackets = _BRACKETS.findall(_STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def read_json(payload: object, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of *payload* (``str``, or ``bytes`` as UTF-8), or an :class:`Unreadable`.

    Arrays and objects nested deeper than *max_depth* are
    ``Unreadable.REFUSED``. Never raises, whatever *payload* holds.
    """
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            return Unreadable.NOT_JSON
    if not isinstance(payload, str):
        return Unreadable.NOT_JSON
    # Counting brackets is cheap; only a payload that has enough of them to be
    # too deep is scanned for its real depth.
    if payload.count("[") + payload.count("{") > max_depth and (nesting_depth(payload) > max_depth):
        return Unreadable.REFUSED
    try:
        return _DECODER.decode(payload)
    except json.JSONDecodeError:
        return Unreadable.NOT_JSON
    except (ValueError, RecursionError):  # too long an integer, NaN/Infinity, too deep
        return Unreadable.REFUSED
