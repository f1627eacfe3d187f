"""``LimitRule``: the part the three limit rules share, pinned once for all of them.

The repr, the key check and storage id, the not-started errors (spelled with
the public class name, also in a user's subclass), the storage jobs a
rule's shutdown removes, and the 1013 close for a storage failure.
"""

from __future__ import annotations

import pytest

from tests.support.rate_helpers import Clock
from ws_guard import ConfigurationError, Guard, rules
from ws_guard.codes import POLICY_VIOLATION, TRY_AGAIN_LATER
from ws_guard.errors import NotStartedError
from ws_guard.rules.limits.limit_rule import LimitRule


class MyRate(rules.MessageRate):
    """A user's subclass: errors and repr still name the rule users wrote."""


def test_every_limit_rule_is_a_limit_rule_with_its_repr() -> None:
    shown = {
        rules.MessageRate("5/second; 100/minute", key=rules.by_ip): (
            "MessageRate('5/second; 100/minute', key=by_ip, enforce=True, name=None)"
        ),
        rules.ConnectRate("3/minute", enforce=False, name="hs"): (
            "ConnectRate('3/minute', key=by_ip, enforce=False, name='hs')"
        ),
        rules.MaxConnectionsPerKey(4): (
            "MaxConnectionsPerKey(4, key=by_ip, enforce=True, name=None)"
        ),
        MyRate("2/second"): "MessageRate('2/second', key=by_connection, enforce=True, name=None)",
    }
    for rule, text in shown.items():
        assert isinstance(rule, LimitRule)
        assert repr(rule) == text


def test_storage_ids_name_the_key_and_the_limit_or_the_rule() -> None:
    assert rules.MessageRate("5/second; 100/minute", key=rules.by_ip).id == "by_ip:5/1s,100/60s"
    assert rules.ConnectRate("3/minute").id == "by_ip:3/60s"
    assert rules.MaxConnectionsPerKey(4).id == "by_ip:4"
    assert rules.MaxConnectionsPerKey(4, name="cap").id == "cap"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: rules.MessageRate("1/second", key="ip"), "MessageRate key must be"),
        (lambda: MyRate("1/second", key="ip"), "MessageRate key must be"),
        (lambda: rules.ConnectRate("1/second", key=1), "ConnectRate key must be"),
        (
            lambda: rules.MaxConnectionsPerKey(1, key=rules.by_connection),
            "MaxConnectionsPerKey key=rules.by_connection gives every connection its own key",
        ),
    ],
)
def test_a_bad_key_is_refused_with_the_rule_name(build: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build()  # type: ignore[operator]
    assert str(caught.value).startswith(message)


def test_a_rule_used_outside_a_guard_says_so() -> None:
    with pytest.raises(NotStartedError) as caught:
        MyRate("1/second").checker(None)  # type: ignore[arg-type]
    assert str(caught.value) == "MessageRate is not part of a Guard"


def test_a_shared_rate_used_before_startup_says_so() -> None:
    rule = rules.MessageRate("1/second", key=rules.by_ip)
    Guard(rules=[rule])
    with pytest.raises(NotStartedError) as caught:
        rule.checker(None)  # type: ignore[arg-type]
    assert str(caught.value) == "MessageRate is used before Guard.startup()"


async def test_shutdown_removes_every_job_the_rule_started() -> None:
    rate = rules.MessageRate("2/second; 10/minute", key=rules.by_ip)
    connect = rules.ConnectRate("3/minute; 1/second")
    guard = Guard(rules=[connect, rate], clock=Clock(0.0))
    await guard.startup()
    # One sweep per shared rate window, one for the connect counters (every shortest window).
    assert sorted(job.interval for job in guard.storage._jobs) == [1.0, 1.0, 60.0]
    await rate.shutdown(guard)
    assert [job.interval for job in guard.storage._jobs] == [1.0]
    await connect.shutdown(guard)
    assert guard.storage._jobs == []
    await guard.shutdown()


def test_limited_and_unavailable_closes() -> None:
    rate = rules.MessageRate("1/second", name="chat")
    assert rate._deny(2.5).wire_reason == "rate_limited; retry-after=3"
    assert (rate._deny(2.5).code, rate._deny(2.5).rule) == (POLICY_VIOLATION, "chat")
    for rule in (rate, rules.ConnectRate("1/second"), rules.MaxConnectionsPerKey(1)):
        down = rule._unavailable()
        assert (down.code, down.wire_reason) == (TRY_AGAIN_LATER, "storage_unavailable")
    cap = rules.MaxConnectionsPerKey(1, enforce=False)._limited()
    assert (cap.code, cap.wire_reason, cap.shadow) == (
        POLICY_VIOLATION,
        "too_many_connections",
        True,
    )
