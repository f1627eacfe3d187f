"""The reconnect policy as a table: every code, hints, cap, jitter, reset, overrides."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.reconnect_cases import (
    TABLE,
    FixedRandom,
    as_dict,
    as_twin,
    matches,
    policy,
    twin_table,
)
from ws_guard import ConfigurationError
from ws_guard.client import (
    DEFAULT_ACTIONS,
    Backoff,
    GaveUp,
    NoRetry,
    RandomDelay,
    ReconnectPolicy,
    RefreshThenRetry,
    RefreshToken,
    Retry,
    Stop,
    close_from_http,
    reason_slug,
    retry_after_hint,
    split_reason,
)


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["name"] for c in TABLE["cases"]])
def test_policy_table(case: dict) -> None:
    decide = policy(case.get("policy"), case["random"]).decide
    got = as_dict(decide(case["code"], case["reason"], case["attempt"], case["refreshes"]))
    assert matches(got, case["expect"]), got
    assert got["code"] == case["code"]
    assert got["reason"] == case["reason"]
    assert got["attempt"] == case["attempt"]


@pytest.mark.parametrize("session", TABLE["sessions"], ids=[s["name"] for s in TABLE["sessions"]])
def test_policy_sessions(session: dict) -> None:
    now = [0.0]
    run = policy(session.get("policy"), session["random"], clock=lambda: now[0]).session()
    for step in session["steps"]:
        now[0] = step["at"]
        if step["op"] == "opened":
            run.opened()
            continue
        got = as_dict(run.closed(step["code"], step["reason"]))
        assert matches(got, step["expect"]), (step, got)


TWINS = twin_table()


@pytest.mark.parametrize("case", TWINS["cases"], ids=[c["name"] for c in TWINS["cases"]])
def test_a_twin_is_decided_as_its_rfc_code(case: dict) -> None:
    """4013 as 1013, 4008 token_expired as 1008 token_expired: daphne's codes (docs/servers.md)."""
    args = (case["reason"], case["attempt"], case["refreshes"])
    twin = as_dict(policy(case.get("policy"), case["random"]).decide(case["code"], *args))
    rfc = as_dict(policy(case.get("policy"), case["random"]).decide(case["rfc"], *args))
    assert twin == as_twin(rfc, case["rfc"])
    assert matches(twin, case["expect"]), twin


@pytest.mark.parametrize("session", TWINS["sessions"], ids=[s["name"] for s in TWINS["sessions"]])
def test_a_session_of_twins_runs_as_its_rfc_codes(session: dict) -> None:
    test_policy_sessions(session)


def test_the_twin_table_covers_every_twinned_code_and_every_session() -> None:
    from ws_guard._core.twins import TWINNED_CODES, rfc_code

    assert {rfc_code(c["code"]) for c in TWINS["cases"]} == TWINNED_CODES
    assert len(TWINS["sessions"]) == len(TABLE["sessions"])


def test_every_code_in_the_close_code_reference_is_covered() -> None:
    covered = {c["code"] for c in TABLE["cases"] if "policy" not in c}
    named = {key for key in DEFAULT_ACTIONS if isinstance(key, int)}
    assert named <= covered
    assert covered - named  # and some codes nobody named


def test_backoff_stays_between_the_step_and_twice_the_step_with_a_real_random_source() -> None:
    decide = ReconnectPolicy(random_source=random.Random(7)).decide
    for attempt in range(1, 12):
        step = min(60.0, 2.0 ** (attempt - 1))
        ceiling = min(60.0, 2.0 * step)
        delays = [decide(1013, "overloaded", attempt).delay for _ in range(400)]  # type: ignore[union-attr]
        assert all(step <= d <= ceiling for d in delays)
        if step < ceiling:  # the spread covers the range, not bunched at either end
            assert min(delays) < step + 0.1 * (ceiling - step)
            assert max(delays) > step + 0.9 * (ceiling - step)
        else:  # at the cap: exactly the cap
            assert set(delays) == {60.0}
        hinted = [decide(1013, "overloaded; retry-after=7", attempt).delay for _ in range(400)]  # type: ignore[union-attr]
        assert all(7.0 <= d <= min(60.0, 7.0 + step) for d in hinted)
    restarts = [decide(1012, "restarting; retry-after=2", 1).delay for _ in range(400)]  # type: ignore[union-attr]
    assert all(2.0 <= d <= 7.0 for d in restarts)


BACKOFF_CODES = sorted(
    {code for code, action in DEFAULT_ACTIONS.items() if isinstance(action, Backoff)}
    | {1004, 1016, 3000, 4999}  # codes nobody named take the fallback back-off
)


@given(
    code=st.sampled_from(BACKOFF_CODES),
    attempt=st.integers(min_value=1, max_value=5000),
    seed=st.integers(min_value=0, max_value=2**32),
    initial=st.sampled_from([0.01, 0.5, 1.0, 3.0, 600.0]),
    factor=st.sampled_from([1.0, 1.5, 2.0, 3.0, 10.0]),
    cap=st.sampled_from([0.1, 1.0, 10.0, 60.0, 3600.0]),
)
@settings(max_examples=300, deadline=None)
def test_property_backoff_never_comes_back_early(
    code: int, attempt: int, seed: int, initial: float, factor: float, cap: float
) -> None:
    """Attempt n waits within [step, 2 * step] (both capped), step = initial * factor**(n-1)."""
    action = Backoff(initial, factor)
    policy = ReconnectPolicy(overrides={code: action}, cap=cap, random_source=random.Random(seed))
    try:
        step = min(cap, initial * factor ** (attempt - 1))
    except OverflowError:  # factor ** (attempt - 1) beyond a float: the step is the cap
        step = cap
    for _ in range(20):
        decision = policy.decide(code, "", attempt)
        assert isinstance(decision, Retry)
        assert min(cap, step) <= decision.delay <= min(cap, 2 * step)


@given(
    code=st.sampled_from(BACKOFF_CODES),
    attempt=st.integers(min_value=1, max_value=5000),
    seed=st.integers(min_value=0, max_value=2**32),
    hint=st.sampled_from(["0", "0.5", "1", "7", "59.999", "60", "61", "3599", "99999"]),
)
@settings(max_examples=300, deadline=None)
def test_property_backoff_with_a_hint_never_comes_back_before_it(
    code: int, attempt: int, seed: int, hint: str
) -> None:
    """With retry-after=h: h <= delay <= max(cap, h), h cut to max_hint (3600 s)."""
    policy = ReconnectPolicy(random_source=random.Random(seed))
    seconds = min(float(hint), 3600.0)
    for _ in range(20):
        decision = policy.decide(code, f"overloaded; retry-after={hint}", attempt)
        assert isinstance(decision, Retry)
        assert seconds <= decision.delay <= max(60.0, seconds)


def test_token_refresh_backoff_keeps_the_floor() -> None:
    policy = ReconnectPolicy(random_source=random.Random(11))
    for refreshes, step in ((1, 1.0), (2, 2.0)):
        delays = [
            policy.decide(1008, "token_expired", refreshes + 1, refreshes).delay  # type: ignore[union-attr]
            for _ in range(400)
        ]
        assert all(step <= d <= 2 * step for d in delays)


def test_two_clients_with_the_same_hint_do_not_come_back_together() -> None:
    a = ReconnectPolicy(random_source=random.Random(1)).decide(1013, "overloaded; retry-after=2", 1)
    b = ReconnectPolicy(random_source=random.Random(2)).decide(1013, "overloaded; retry-after=2", 1)
    assert isinstance(a, Retry)
    assert isinstance(b, Retry)
    assert a.delay != b.delay


def test_decisions_are_frozen_slotted_values() -> None:
    decision = ReconnectPolicy(random_source=FixedRandom(0.5)).decide(1013, "overloaded", 1)
    assert decision == Retry(1.5, 1013, "overloaded", 1)
    assert not hasattr(decision, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.delay = 0.0  # type: ignore[misc]
    assert RefreshThenRetry(0.0, 1008, "token_expired", 1) != Retry(0.0, 1008, "token_expired", 1)


@pytest.mark.parametrize(
    ("reason", "slug", "hints"),
    [
        ("overloaded; retry-after=3", "overloaded", {"retry-after": "3"}),
        ("restarting", "restarting", {}),
        ("", "", {}),
        (" content:no_links ", "content:no_links", {}),
        ("a; B=1; b=2; junk; c = x y ", "a", {"b": "1", "c": "x y"}),
        ("a;;", "a", {}),
    ],
)
def test_split_reason(reason: str, slug: str, hints: dict[str, str]) -> None:
    assert split_reason(reason) == (slug, hints)
    assert reason_slug(reason) == slug


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        ("overloaded; retry-after=3", 3.0),
        ("overloaded; retry-after=0", 0.0),
        ("overloaded; retry-after=2.25", 2.25),
        ("overloaded; retry-after=-1", None),
        ("overloaded; retry-after=1e2", None),
        ("overloaded; retry-after=infinity", None),
        ("overloaded; retry-after=٣", None),  # a non-ASCII digit
        ("overloaded; retry-after=", None),
        ("overloaded", None),
        ("", None),
    ],
)
def test_retry_after_hint(reason: str, hint: float | None) -> None:
    assert retry_after_hint(reason) == hint


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (
            503,
            {"retry-after": "3"},
            b"overloaded; retry-after=3",
            (1013, "overloaded; retry-after=3"),
        ),
        (503, {"retry-after": "4"}, b"", (1013, "overloaded; retry-after=4")),
        (503, {"retry-after": "4"}, b"overloaded", (1013, "overloaded; retry-after=4")),
        (503, {}, b"<html>busy</html>", (1013, "overloaded")),
        (503, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"", (1013, "overloaded")),
        (
            503,
            {"retry-after": "5"},
            b"restarting; retry-after=5",
            (1012, "restarting; retry-after=5"),
        ),
        (
            429,
            {"retry-after": "2"},
            b"connect_rate_limited",
            (1013, "connect_rate_limited; retry-after=2"),
        ),
        (429, {}, b"", (1013, "rate_limited")),
        (403, {}, b"token_invalid", (1008, "token_invalid")),
        (403, {}, b"token_expired", (1008, "token_expired")),
        (403, {}, b"", (1008, "http_403")),
        (401, {}, b"Unauthorized!", (1008, "http_401")),
        (404, {}, b"not_found", (1008, "http_404")),
        (502, {}, b"", (1011, "http_502")),
        (200, {}, b"hello", (1002, "http_200")),
    ],
)
def test_close_from_http(status: int, headers: dict, body: bytes, expected: tuple) -> None:
    assert close_from_http(status, headers, body) == expected


def test_http_refusals_drive_the_same_table() -> None:
    decide = ReconnectPolicy(random_source=FixedRandom(0.5)).decide
    assert decide(*close_from_http(503, {"retry-after": "2"}, b""), 1) == Retry(
        2.5, 1013, "overloaded; retry-after=2", 1
    )
    assert isinstance(decide(*close_from_http(403, {}, b"token_invalid"), 1), Stop)
    assert isinstance(decide(*close_from_http(403, {}, b"token_expired"), 1), RefreshThenRetry)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: ReconnectPolicy(cap=0), "cap must be a finite number > 0, not 0"),
        (lambda: ReconnectPolicy(cap=float("inf")), "cap must be a finite number > 0, not inf"),
        (lambda: ReconnectPolicy(stable_after=-1), "stable_after must be"),
        # 0 would reset the attempt count at every accept-then-close: no back-off growth.
        (
            lambda: ReconnectPolicy(stable_after=0),
            "stable_after must be a finite number > 0, not 0",
        ),
        # 0 would throw away every retry-after hint the server sends.
        (lambda: ReconnectPolicy(max_hint=0), "max_hint must be a finite number > 0, not 0"),
        (lambda: ReconnectPolicy(cap=60_000), "cap is in seconds (at most 3600); 60000 looks like"),
        (
            lambda: ReconnectPolicy(stable_after=30_000),
            "stable_after is in seconds (at most 3600); 30000 looks like milliseconds",
        ),
        (
            lambda: ReconnectPolicy(max_hint=3_600_000),
            "max_hint is in seconds (at most 86400); 3600000 looks like milliseconds",
        ),
        (
            lambda: Backoff(initial=1000),
            "Backoff initial is in seconds (at most 600); 1000 looks like milliseconds",
        ),
        (
            lambda: RandomDelay(0, 5000),
            "RandomDelay high is in seconds (at most 600); 5000 looks like milliseconds",
        ),
        (
            lambda: ReconnectPolicy(max_attempts=0),
            "max_attempts must be None or an int >= 1, not 0",
        ),
        (lambda: ReconnectPolicy(max_attempts=True), "not True"),
        (lambda: ReconnectPolicy(overrides={999: Backoff()}), "not 999"),
        (lambda: ReconnectPolicy(overrides={"1013": Backoff()}), "not '1013'"),
        (lambda: ReconnectPolicy(overrides={(1008, 5): Backoff()}), "not (1008, 5)"),
        (lambda: ReconnectPolicy(overrides={1013: "backoff"}), "override for 1013 must be"),
        (lambda: ReconnectPolicy(overrides=[(1013, Backoff())]), "overrides must be a mapping"),
        (lambda: ReconnectPolicy(fallback=None), "fallback must be"),  # type: ignore[arg-type]
        (lambda: Backoff(initial=0), "Backoff initial must be a finite number > 0, not 0"),
        (lambda: Backoff(factor=0.5), "Backoff factor must be a finite number >= 1, not 0.5"),
        (lambda: RandomDelay(3, 1), "RandomDelay high 1 is below low 3"),
        (lambda: RandomDelay(-1, 1), "RandomDelay low must be"),
        (lambda: RefreshToken(0), "max_refreshes must be an int >= 1, not 0"),
        (lambda: RefreshToken(backoff=NoRetry()), "backoff must be a Backoff"),  # type: ignore[arg-type]
    ],
)
def test_misconfiguration_names_the_bad_value(build, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        build()
    assert fragment in str(info.value)


def test_gave_up_carries_the_final_close() -> None:
    stop = Stop(
        1008, "content:no_links", 1, "policy violation: the server would refuse a retry again"
    )
    error = GaveUp(stop)
    assert (error.code, error.reason, error.decision) == (1008, "content:no_links", stop)
    assert str(error) == (
        "gave up reconnecting after close 1008 'content:no_links': "
        "policy violation: the server would refuse a retry again"
    )


def test_importing_the_policy_does_not_import_websockets() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    import ws_guard

    src = str(Path(ws_guard.__file__).parents[1])
    code = "import sys, ws_guard.client; print('websockets' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": src}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"
