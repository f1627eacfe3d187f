"""Choose and compile the regular-expression engine a ``Pattern`` rule runs on.

Python's ``re`` backtracks: ``(\\w+[\\s.]?)+\\.(zip|mov)\\b`` took 13 s on a
26-byte message and blocked the event loop (every connection) meanwhile. RE2
(the optional ``google-re2`` package, ``pip install ws-guard[re2]``) matches
in time linear in the message, and refuses the features that need
backtracking (backreferences, lookaround; https://github.com/google/re2/wiki/Syntax).

``compile_search(regex, flags, engine)`` returns ``(search, engine_used,
compiled)``; ``search(text)`` is truthy when the regex matches somewhere.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from typing import Any

from ws_guard.errors import ConfigurationError

logger = logging.getLogger("ws_guard")

ENGINES = ("auto", "re2", "re")

#: re flags RE2 can honour, as the inline flag RE2 reads (re.ASCII and
#: re.UNICODE need nothing: RE2's \w \d \s \b are ASCII, str is its default).
_INLINE = {re.IGNORECASE: "i", re.MULTILINE: "m", re.DOTALL: "s"}
_NEUTRAL = re.ASCII | re.UNICODE

#: RE2 parse errors (its own wording, re2/parse.cc) and the feature each means.
_FEATURES = (
    ("(?=", "lookahead"),
    ("(?!", "negative lookahead"),
    ("(?<=", "lookbehind"),
    ("(?<!", "negative lookbehind"),
    ("(?>", "atomic group"),
    ("(?#", "comment group"),
    ("++", "possessive quantifier"),
    ("*+", "possessive quantifier"),
    ("?+", "possessive quantifier"),
    ("invalid repetition size", "repetition count over 1000"),
    ("pattern too large", "a program over RE2's memory budget"),
)
_BACKREF = re.compile(r"invalid escape sequence: \\[1-9]")
#: RE2 cuts ``(?P=name)`` to ``(?P`` in its message.
_NAMED_BACKREF = re.compile(r"invalid perl operator: \(\?P(=|$)")

Search = Callable[[str], object]


def _load_re2() -> Any | None:
    """The ``re2`` module of google-re2, or None when it is not installed."""
    try:
        return importlib.import_module("re2")
    except ImportError:
        return None


def re2_feature(error: str) -> str:
    """The feature an RE2 compile error names, in Python's terms where known."""
    if _BACKREF.search(error):
        return f"backreference ({error})"
    if _NAMED_BACKREF.search(error):
        return f"named backreference ({error})"
    for marker, feature in _FEATURES:
        if marker in error:
            return f"{feature} ({error})"
    return error


def _compile_re2(re2: Any, regex: str, flags: int) -> Search:
    """Compile *regex* with RE2, or raise ``ValueError`` naming the feature."""
    unsupported = flags & ~(_NEUTRAL | sum(_INLINE))
    if unsupported:
        raise ValueError(f"flag {re.RegexFlag(unsupported)!r}")
    inline = "".join(letter for flag, letter in _INLINE.items() if flags & flag)
    options = re2.Options()
    options.log_errors = False  # RE2 would print each refusal to stderr
    try:
        compiled = re2.compile(f"(?{inline}){regex}" if inline else regex, options)
    except re2.error as exc:
        raise ValueError(re2_feature(_text(exc))) from exc
    search = compiled.search

    def re2_search(text: str) -> object:
        try:
            return search(text)
        except UnicodeEncodeError:
            # RE2 reads UTF-8; a lone surrogate (never from a real server,
            # which validates UTF-8) is searched as its raw bytes.
            return search(text.encode("utf-8", "surrogatepass"))

    return re2_search


def _text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else ""
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


def compile_search(
    pattern: str | re.Pattern[str], flags: int, engine: str
) -> tuple[Search, str, re.Pattern[str] | None]:
    """Compile *pattern* for *engine*: ``(search, "re" or "re2", compiled)``.

    ``engine="auto"`` runs RE2 when google-re2 is installed and the pattern
    compiles there, else ``re``, logging a WARNING naming the pattern;
    ``"re2"`` raises :class:`ConfigurationError` instead of falling back;
    ``"re"`` is Python's backtracking engine. *flags* are ``re`` flags.
    """
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ConfigurationError(f"Pattern engine must be one of {ENGINES}, not {engine!r}")
    if isinstance(pattern, re.Pattern):
        if flags:
            raise ConfigurationError(
                f"Pattern {pattern!r} is already compiled: give flags to re.compile, not {flags!r}"
            )
        regex, flags = pattern.pattern, pattern.flags
    else:
        regex = pattern
    if not isinstance(regex, str):
        raise ConfigurationError(f"Pattern needs a str regular expression, not {pattern!r}")
    if not isinstance(flags, int) or isinstance(flags, bool):
        raise ConfigurationError(f"Pattern flags must be re flags, not {flags!r}")

    if engine == "re2":
        re2 = _load_re2()
        if re2 is None:
            raise ConfigurationError(
                f"Pattern {regex!r} asks for engine='re2', but google-re2 is not installed "
                "(pip install 'ws-guard[re2]')"
            )
        try:
            return _compile_re2(re2, regex, flags), "re2", None
        except ValueError as exc:
            raise ConfigurationError(
                f"Pattern {regex!r} cannot run on RE2: it uses {exc}; "
                "rewrite it, or choose engine='re' (backtracking)"
            ) from None

    try:
        compiled = re.compile(regex, flags)
    except re.error as exc:
        raise ConfigurationError(
            f"Pattern {regex!r} is not a valid regular expression: {exc}"
        ) from exc
    if engine == "re":
        return compiled.search, "re", compiled

    re2 = _load_re2()
    if re2 is None:
        logger.warning(
            "Pattern %r runs on Python's backtracking re engine: google-re2 is not "
            "installed (pip install 'ws-guard[re2]'), so a crafted message can "
            "stall the event loop on a pattern with nested repetition",
            regex,
        )
        return compiled.search, "re", compiled
    try:
        search = _compile_re2(re2, regex, flags)
    except ValueError as exc:
        logger.warning(
            "Pattern %r runs on Python's backtracking re engine: RE2 cannot run it (it uses %s)",
            regex,
            exc,
        )
        return compiled.search, "re", compiled
    differences = meaning_differences(regex, flags | compiled.flags)
    if differences:
        logger.warning(
            "Pattern %r runs on RE2, where %s; pass engine='re2' to accept "
            "RE2's meaning, or engine='re' to keep Python's",
            regex,
            "; ".join(differences),
        )
    return search, "re2", None


#: Escapes whose meaning RE2 narrows to ASCII, where Python's ``re`` reads
#: Unicode for str patterns (re module docs, "Regular Expression Syntax").
_UNICODE_CLASSES = frozenset("wWdDsSbB")


def meaning_differences(regex: str, flags: int) -> list[str]:
    """Where *regex* would match differently on RE2 than on ``re``: [] when nowhere.

    Looks for ``\\w \\d \\s \\b`` (and their negations), ASCII-only in RE2
    unless ``re.ASCII`` already makes them so in ``re``, and a ``$``
    outside a class, which in ``re`` also matches before a final newline.
    """
    classes: set[str] = set()
    dollar = False
    in_class = False
    i, n = 0, len(regex)
    while i < n:
        char = regex[i]
        if char == "\\" and i + 1 < n:
            if regex[i + 1] in _UNICODE_CLASSES:
                classes.add("\\" + regex[i + 1])
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            i += 1
            if i < n and regex[i] == "^":
                i += 1
            if i < n and regex[i] == "]":  # a leading ] is a literal
                i += 1
            continue
        elif char == "$":
            dollar = True
        i += 1
    found = []
    if classes and not flags & re.ASCII:
        found.append(f"{' '.join(sorted(classes))} match ASCII characters only")
    if dollar and not flags & re.MULTILINE:
        found.append("$ matches only at the very end, not before a final newline")
    return found
