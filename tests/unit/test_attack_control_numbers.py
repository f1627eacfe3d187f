"""An int too large for a float is refused as a bad setting, never an ``OverflowError``.

``float()`` of an int past 1.8e308 raises ``OverflowError``; a JSON body may
carry one (Python reads up to 4300 digits), and so may a setting. Every
numeric check goes through ``_validate.is_number``, which now refuses such
an int, so the caller gets ``ConfigurationError`` (admin_app: 400).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ws_guard import ConfigurationError, Guard, admin_app, rules
from ws_guard._validate import MAX_COUNT, is_number

HUGE = 10**400
TOKEN = "a" * 16 + "B" * 16 + "-x"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: rules.AutoBan(after=1, within=HUGE, ban=60), "AutoBan within"),
        (lambda: rules.AutoBan(after=1, within=60, ban=HUGE), "AutoBan ban"),
        (lambda: rules.AutoBan(after=MAX_COUNT + 1, within=60, ban=60), "AutoBan after"),
        (lambda: rules.AutoBan(after=1, within=60, ban=60, max_keys=HUGE), "AutoBan max_keys"),
        (lambda: Guard(drain_window=HUGE), "drain_window"),
        (lambda: rules.JWTAuth("k" * 32, algorithms=["HS256"], leeway=HUGE), "JWTAuth leeway"),
        (lambda: rules.JWTAuth("k" * 32, algorithms=["HS256"], leeway=-HUGE), "JWTAuth leeway"),
    ],
)
def test_a_huge_int_setting_is_a_configuration_error(
    build: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build()


async def test_revoke_with_a_huge_int_until_is_a_configuration_error() -> None:
    guard = Guard()
    with pytest.raises(ConfigurationError, match=r"^until must be a time in seconds"):
        await guard.revoke(jti="t", until=HUGE)
    assert guard.metrics.snapshot().revocations == 0


async def test_admin_answers_400_for_a_400_digit_until() -> None:
    guard = Guard()
    await guard.startup()
    transport = httpx.ASGITransport(app=admin_app(guard, token=TOKEN))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
            response = await http.post(
                "/revoke",
                headers={"Authorization": f"Bearer {TOKEN}"},
                content=b'{"jti": "t", "until": 1' + b"0" * 400 + b"}",
            )
    finally:
        await guard.shutdown()
    assert response.status_code == 400
    assert response.json()["error"].startswith("until must be a time in seconds since the epoch")


def test_ints_that_are_floats_still_count() -> None:
    assert is_number(2**60)  # a gauge may read a large int
    assert is_number(MAX_COUNT, integer=True)
    assert not is_number(MAX_COUNT + 1, integer=True)
    assert not is_number(HUGE)
    assert not is_number(-HUGE)
