"""Attacks on JWTAuth(verified_cache=N): what a hit costs, and what it hands out.

In process, real PyJWT. A hit must cost less than the verification it
saves, whatever the claims hold: a token whose claims nest many objects
made ``copy.deepcopy`` of them cost more than PyJWT's whole decode. And
each hit's claims are the connection's own, equal to a decode's, of the
same types, also where a ``decode`` of one's own returns more than JSON.
"""

from __future__ import annotations

import time
from typing import Any

from tests.support.jwt_keys import SECRET, mint
from ws_guard import rules


def best_of(run: Any, rounds: int = 5, each: int = 20) -> float:
    """The fastest of *rounds* averages of *each* calls to *run* (seconds): noise only adds."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(each):
            run()
        best = min(best, (time.perf_counter() - started) / each)
    return best


def test_a_hit_on_claims_with_many_nested_objects_costs_less_than_a_verification() -> None:
    token = mint("alice", items=[{} for _ in range(900)])
    cached = rules.JWTAuth(SECRET, algorithms=["HS256"], verified_cache=10)
    plain = rules.JWTAuth(SECRET, algorithms=["HS256"])
    first = cached.verify_now(token)
    assert isinstance(first, dict)
    hit = best_of(lambda: cached.verify_now(token))
    verify = best_of(lambda: plain.verify_now(token))
    cache = cached.verifier.cache
    assert cache is not None
    assert cache.misses == 1
    # Measured here: a deep-copying hit 2.3x a verification, a parsing one 1/6.
    assert hit < verify / 2, (hit, verify)


def test_each_hit_gets_equal_claims_of_its_own() -> None:
    token = mint("alice", roles=["reader"], profile={"tier": "free", "n": [1, 2.5]})
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], verified_cache=10)
    miss = rule.verify_now(token)
    hit = rule.verify_now(token)
    assert isinstance(miss, dict)
    assert isinstance(hit, dict)
    assert hit == miss
    hit["roles"].append("admin")
    hit["profile"]["n"].append(3)
    again = rule.verify_now(token)
    assert isinstance(again, dict)
    assert again["roles"] == ["reader"]
    assert again["profile"] == {"tier": "free", "n": [1, 2.5]}


class Enriched(rules.JWTAuth):
    """A decode of one's own that adds a claim JSON cannot carry as it is (a tuple)."""

    def decode(self, token: str, key: Any) -> Any:
        claims = super().decode(token, key)
        if isinstance(claims, dict):
            claims["scopes"] = ("read", "write")
            claims["nested"] = [("a", 1)]
        return claims


def test_claims_json_would_change_are_copied_as_they_are() -> None:
    token = mint("alice")
    rule = Enriched(SECRET, algorithms=["HS256"], verified_cache=10)
    miss = rule.verify_now(token)
    hit = rule.verify_now(token)
    assert isinstance(miss, dict)
    assert isinstance(hit, dict)
    assert hit == miss
    assert hit["scopes"] == ("read", "write")
    assert hit["nested"] == [("a", 1)]
    assert hit["nested"] is not miss["nested"]
