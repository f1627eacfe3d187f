"""Built-in load gauges."""

from __future__ import annotations

from ._gauge import LoadGauge, check_positive


class ConnectionCount(LoadGauge):
    """Open guarded connections in this process; connection ``limit + 1`` is shed."""

    def __init__(self, limit: int, *, enforce: bool = True, name: str = "connections") -> None:
        check_positive("ConnectionCount limit", limit, integer=True)
        super().__init__(limit, name=name, enforce=enforce)

    def value(self) -> float:
        return 0 if self._guard is None else self._guard.metrics.active_connections
