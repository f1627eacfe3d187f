"""``ctx.extra``: a mapping whose first entry lives in the connection's slots."""

from __future__ import annotations

import pytest

from ws_guard import Guard
from ws_guard._core.connection import Connection


async def _never() -> None:
    raise AssertionError("not called")


def conn() -> Connection:
    return Connection(Guard(), {"type": "websocket", "path": "/ws"}, _never, _never)  # type: ignore[arg-type]


def test_one_entry_needs_no_dict_and_a_second_one_does() -> None:
    c = conn()
    first, second = object(), object()
    assert len(c.extra) == 0
    assert c.extra.get(first) is None
    c.extra[first] = "session"
    assert c._state_more is None  # the common case: one rule's state, no dict
    assert c.extra[first] == "session"
    c.extra[second] = 2
    assert c._state_more == {second: 2}
    assert dict(c.extra) == {first: "session", second: 2}
    assert len(c.extra) == 2
    c.extra[first] = "refreshed"  # overwrite in place, still first
    assert list(c.extra.values()) == ["refreshed", 2]
    assert c.extra.pop(first) == "refreshed"
    assert c.extra.pop(first, None) is None
    assert dict(c.extra) == {second: 2}
    with pytest.raises(KeyError):
        del c.extra[first]


def test_keys_compare_by_equality_none_included() -> None:
    c = conn()
    c.extra[None] = "none is a key"
    c.extra["external"] = True
    assert c.extra[None] == "none is a key"
    assert c.extra.setdefault("external", False) is True
    assert "missing" not in c.extra
    with pytest.raises(KeyError):
        c.extra["missing"]
