"""The shared reconnect-policy case table (tests/data/reconnect_cases.json).

Both implementations run it: ws_guard.client in Python, and
examples/static/reconnect.js in node and in headless Chromium. The policy
settings in the table use the JavaScript option names; this module builds
the Python policy from them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.helpers import FixedRandom
from ws_guard.client import (
    Backoff,
    NoRetry,
    RandomDelay,
    ReconnectPolicy,
    RefreshThenRetry,
    RefreshToken,
    Retry,
    Stop,
)

CASES_PATH = Path(__file__).resolve().parents[1] / "data" / "reconnect_cases.json"
TABLE: dict[str, Any] = json.loads(CASES_PATH.read_text())
KINDS = {Retry: "retry", RefreshThenRetry: "refresh_then_retry", Stop: "stop"}


def action(spec: dict[str, Any]) -> Any:
    kind = spec["action"]
    if kind == "backoff":
        return Backoff(spec["initial"], spec["factor"])
    if kind == "random_delay":
        return RandomDelay(spec["low"], spec["high"], spec.get("planned", False))
    if kind == "refresh_token":
        return RefreshToken(spec["maxRefreshes"], action(spec["backoff"]))
    if kind == "no_retry":
        return NoRetry(spec["why"])
    return spec  # not an action: the policy must refuse it


def policy(spec: dict[str, Any] | None, draw: float, clock: Any = None) -> ReconnectPolicy:
    spec = spec or {}
    overrides: dict[Any, Any] = {}
    for key, value in spec.get("overrides", {}).items():
        code, _, slug = key.partition(":")
        overrides[(int(code), slug) if slug else int(code)] = action(value)
    kwargs: dict[str, Any] = {}
    for js, py in (
        ("cap", "cap"),
        ("stableAfter", "stable_after"),
        ("maxAttempts", "max_attempts"),
        ("maxHint", "max_hint"),
    ):
        if js in spec:
            kwargs[py] = spec[js]
    if "fallback" in spec:
        kwargs["fallback"] = action(spec["fallback"])
    return ReconnectPolicy(
        overrides=overrides, random_source=FixedRandom(draw), clock=clock, **kwargs
    )


def as_dict(decision: Any) -> dict[str, Any]:
    """A decision in the JavaScript module's shape, for comparing the two."""
    out = {"kind": KINDS[type(decision)], "code": decision.code, "reason": decision.reason}
    out["attempt"] = decision.attempt
    if isinstance(decision, Stop):
        out["why"] = decision.why
    else:
        out["delay"] = decision.delay
    return out


def matches(got: dict[str, Any], expect: dict[str, Any]) -> bool:
    for key, value in expect.items():
        if key == "delay":
            if "delay" not in got or abs(got["delay"] - value) > 1e-9:
                return False
        elif got.get(key) != value:
            return False
    return True


def check_js_results(results: dict[str, Any]) -> None:
    """Assert the JavaScript module's answers match the table and the Python policy."""
    from ws_guard import ConfigurationError
    from ws_guard.client import retry_after_hint, split_reason

    assert len(results["cases"]) == len(TABLE["cases"])
    for case, got in zip(TABLE["cases"], results["cases"], strict=True):
        python = as_dict(
            policy(case.get("policy"), case["random"]).decide(
                case["code"], case["reason"], case["attempt"], case["refreshes"]
            )
        )
        assert matches(got, case["expect"]), (case["name"], got)
        assert matches(got, python), (case["name"], got, python)
    for session, got in zip(TABLE["sessions"], results["sessions"], strict=True):
        expected = [step["expect"] for step in session["steps"] if step["op"] == "closed"]
        assert len(got) == len(expected), session["name"]
        for step_got, step_expect in zip(got, expected, strict=True):
            assert matches(step_got, step_expect), (session["name"], step_got, step_expect)
    for reason, got in zip(TABLE["parsing"], results["parsing"], strict=True):
        slug, hints = split_reason(reason)
        assert got == {"split": {"slug": slug, "hints": hints}, "hint": retry_after_hint(reason)}
    for spec, got in zip(TABLE["invalid_policies"], results["invalid"], strict=True):
        assert got == "refused", spec
        try:
            policy(spec, 0.5)
        except ConfigurationError:
            pass
        else:
            raise AssertionError(f"Python accepted {spec}")


def _names_a_twin(spec: dict[str, Any] | None) -> bool:
    """Whether a policy's overrides name a twin code itself (which then means what it says)."""
    from ws_guard._core.twins import TWINNED_CODES, rfc_code

    codes = {int(key.partition(":")[0]) for key in (spec or {}).get("overrides", {})}
    return any(rfc_code(code) in TWINNED_CODES and rfc_code(code) != code for code in codes)


def as_twin(decision: dict[str, Any], rfc: int) -> dict[str, Any]:
    """*decision* (``as_dict``'s shape, or an ``expect``) for close code *rfc*, as its twin's.

    The same decision, with the code received: ``code`` and a stop's ``why``
    name the twin (``no retry after close code 4013``), as they name
    whatever code arrived.
    """
    from ws_guard._core.twins import twin_code

    twin = twin_code(rfc)
    out = dict(decision)
    if "code" in out:
        out["code"] = twin
    if "why" in out:
        out["why"] = out["why"].replace(f"close code {rfc}", f"close code {twin}")
    return out


def twin_table() -> dict[str, Any]:
    """The table's cases and sessions with every twinned RFC code sent as its twin.

    Each derived case keeps its RFC case's ``expect``: the twin (1013 → 4013,
    ``ws_guard._core.twins``) must be decided exactly as the code it stands
    for, in both implementations. Cases whose policy overrides a twin code
    itself are left out (an override of 4013 is the app's own meaning). The
    shape is the table's, so ``runCases`` of tests/js/policy_cases.mjs runs it.
    """
    from ws_guard._core.twins import TWINNED_CODES, twin_code

    cases = [
        {**case, "name": f"{case['name']} (as {twin_code(case['code'])})"}
        | {
            "code": twin_code(case["code"]),
            "rfc": case["code"],
            "expect": as_twin(case["expect"], case["code"]),
        }
        for case in TABLE["cases"]
        if case["code"] in TWINNED_CODES and not _names_a_twin(case.get("policy"))
    ]
    sessions = [
        {
            **session,
            "steps": [
                {
                    **step,
                    "code": twin_code(step["code"]),
                    "expect": as_twin(step["expect"], step["code"]),
                }
                if step["op"] == "closed"
                else step
                for step in session["steps"]
            ],
        }
        for session in TABLE["sessions"]
        if not _names_a_twin(session.get("policy"))
    ]
    return {"cases": cases, "sessions": sessions, "parsing": [], "invalid_policies": []}
