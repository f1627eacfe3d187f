"""Reading a close reason: the slug, and the ``; key=value`` hints after it.

ws_guard sends reasons such as ``overloaded; retry-after=3``. A client must
read them defensively: the reason comes from whatever server is on the other
end, so a hint that is not a plain non-negative number is ignored, never
trusted. ``examples/static/reconnect.js`` parses the same way.
"""

from __future__ import annotations

import re

#: Plain decimal seconds: ``3`` or ``2.5``. No sign, exponent, ``inf`` or ``nan``.
_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")


def split_reason(reason: str) -> tuple[str, dict[str, str]]:
    """The slug before the first ``;`` and the ``key=value`` hints after it.

    Keys are lower-cased; the first occurrence of a key wins; parts without
    ``=`` are skipped.
    """
    slug, _, rest = reason.partition(";")
    hints: dict[str, str] = {}
    if rest:
        for part in rest.split(";"):
            key, sep, value = part.partition("=")
            if sep:
                hints.setdefault(key.strip().lower(), value.strip())
    return slug.strip(), hints


def reason_slug(reason: str) -> str:
    """``"overloaded; retry-after=3"`` -> ``"overloaded"``."""
    return reason.partition(";")[0].strip()


def retry_after_hint(reason: str) -> float | None:
    """The ``retry-after`` hint in seconds, or ``None`` when absent or malformed."""
    value = split_reason(reason)[1].get("retry-after")
    if value is None or not _SECONDS.fullmatch(value):
        return None
    return float(value)
