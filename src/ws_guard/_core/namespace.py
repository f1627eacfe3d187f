"""The namespace: the prefix of every storage key one guard writes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from ws_guard.errors import ConfigurationError

_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def guard_namespace(namespace: object, paths: Sequence[str] | None, rules: Sequence[object]) -> str:
    """The prefix of every storage key a guard writes: *namespace*, or one derived.

    The derived name is a hash of the guard's paths and of each rule's class
    and storage id (key function and rates, or ``name``), so the workers of
    one app, which build the same guard, share counters, while two guards
    with other paths or rules in one app do not. Raises ``ConfigurationError``
    for a name that is not 1-64 letters, digits, ``_``, ``.`` or ``-``
    (braces would break the Redis Cluster hash tag).
    """
    if namespace is not None:
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise ConfigurationError(
                f"namespace must be 1-64 letters, digits, '_', '.' or '-', not {namespace!r}"
            )
        return namespace
    parts = sorted(
        f"{type(rule).__module__}.{type(rule).__qualname__}:{getattr(rule, 'id', '')}"
        for rule in rules
    )
    source = repr((None if paths is None else sorted(paths), parts))
    return "g" + hashlib.sha256(source.encode()).hexdigest()[:12]
