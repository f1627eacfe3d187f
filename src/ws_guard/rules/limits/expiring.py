"""Per-key in-memory state that is dropped once it can no longer affect a decision.

Memory follows the keys seen recently, not every key ever seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class _Expiring(Protocol):
    def alive(self, now: float) -> bool: ...


S = TypeVar("S", bound=_Expiring)


class ExpiringStates(Generic[S]):
    """Per-key state objects that are dropped once dead.

    A state says when it is dead (``alive(now)`` is False: its window ended,
    nothing is in flight). The guard's maintenance task sweeps dead states
    every *interval* seconds (the window length), off the message path, so a
    burst of 100k keys is freed within two windows after it ends. A holder
    of a state must look it up again through :meth:`get` once its window
    ended, since a dead state may have been dropped and replaced.
    """

    __slots__ = ("_factory", "_states", "interval")

    def __init__(self, interval: float, factory: Callable[[str], S]) -> None:
        self.interval = interval
        self._factory = factory
        self._states: dict[str, S] = {}

    def get(self, key: str, now: float) -> S:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = self._factory(key)
        return state

    def peek(self, key: str) -> S | None:
        return self._states.get(key)

    def sweep(self, now: float) -> int:
        """Drop dead states; returns how many were dropped."""
        dead = [key for key, state in self._states.items() if not state.alive(now)]
        for key in dead:
            del self._states[key]
        if len(dead) > len(self._states):
            self._states = dict(self._states)  # a dict never shrinks its table; copy it
        return len(dead)

    def values(self) -> Iterator[S]:
        return iter(list(self._states.values()))

    def clear(self) -> None:
        self._states = {}

    def __len__(self) -> int:
        return len(self._states)
