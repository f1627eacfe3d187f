"""``ctx.extra``: the rules' per-connection state, keyed by the rule.

Most connections hold one rule's state (the auth session), so the first
entry lives in two slots of the connection and a dict is made only for a
second one: an idle connection's footprint is what 10 000 of them multiply,
and an empty dict with one entry costs more than the rest of the session.
The mapping itself is a view, made when read and not kept.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Protocol

#: Marks the first slot as empty (``None`` is a key a rule may use).
EMPTY: Any = object()


class StateSlots(Protocol):
    """Where a connection keeps its rules' state (see ``Connection``)."""

    _state_key: Any
    _state_value: Any
    _state_more: dict[Any, Any] | None


class RuleState(MutableMapping[Any, Any]):
    """A mapping over *slots*' first entry and its dict of further ones."""

    __slots__ = ("_slots",)

    def __init__(self, slots: StateSlots) -> None:
        self._slots = slots

    def _is_first(self, key: Any) -> bool:
        first = self._slots._state_key
        return first is not EMPTY and (first is key or first == key)

    def __getitem__(self, key: Any) -> Any:
        if self._is_first(key):
            return self._slots._state_value
        more = self._slots._state_more
        if more is None:
            raise KeyError(key)
        return more[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        slots = self._slots
        if slots._state_key is EMPTY or self._is_first(key):
            slots._state_key, slots._state_value = key, value
            return
        if slots._state_more is None:
            slots._state_more = {}
        slots._state_more[key] = value

    def __delitem__(self, key: Any) -> None:
        slots = self._slots
        if self._is_first(key):
            slots._state_key = slots._state_value = EMPTY
            return
        if slots._state_more is None:
            raise KeyError(key)
        del slots._state_more[key]

    def __iter__(self) -> Iterator[Any]:
        slots = self._slots
        if slots._state_key is not EMPTY:
            yield slots._state_key
        if slots._state_more is not None:
            yield from list(slots._state_more)

    def __len__(self) -> int:
        slots = self._slots
        first = 0 if slots._state_key is EMPTY else 1
        return first + (0 if slots._state_more is None else len(slots._state_more))
