"""JWTAuth refuses configurations that cannot be safe, at construction."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.jwt_keys import EC_KEY, RSA_KEY, RSA_PUBLIC_PEM, SECRET, mint
from ws_guard import ConfigurationError, Guard, rules


def test_algorithms_are_required() -> None:
    with pytest.raises(ConfigurationError, match="algorithms"):
        rules.JWTAuth(SECRET)


@pytest.mark.parametrize("algorithms", [[], "HS256", None])
def test_algorithms_must_be_a_non_empty_list(algorithms: object) -> None:
    with pytest.raises(ConfigurationError, match="algorithms"):
        rules.JWTAuth(SECRET, algorithms=algorithms)  # type: ignore[arg-type]


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg: str) -> None:
    with pytest.raises(ConfigurationError, match="unsigned"):
        rules.JWTAuth(SECRET, algorithms=[alg])


def test_unknown_algorithm_is_named() -> None:
    with pytest.raises(ConfigurationError, match="'HS999'"):
        rules.JWTAuth(SECRET, algorithms=["HS999"])


def test_hmac_and_public_key_algorithms_do_not_mix() -> None:
    with pytest.raises(ConfigurationError, match="algorithm confusion"):
        rules.JWTAuth(RSA_PUBLIC_PEM, algorithms=["RS256", "HS256"])


@pytest.mark.parametrize(("alg", "minimum"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_short_hmac_secret_is_refused(alg: str, minimum: int) -> None:
    with pytest.raises(ConfigurationError, match=f"minimum recommended length of {minimum}"):
        rules.JWTAuth("x" * (minimum - 1), algorithms=[alg])
    rules.JWTAuth("x" * minimum, algorithms=[alg])  # exactly the hash size is enough


def test_secret_never_appears_in_the_error() -> None:
    secret = "hunter2-but-too-short"
    with pytest.raises(ConfigurationError) as info:
        rules.JWTAuth(secret, algorithms=["HS256"])
    assert secret not in str(info.value)
    assert secret not in repr(rules.JWTAuth(SECRET, algorithms=["HS256"]))


def test_asymmetric_key_with_hmac_algorithm_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="cannot verify HS256"):
        rules.JWTAuth(RSA_PUBLIC_PEM, algorithms=["HS256"])
    with pytest.raises(ConfigurationError, match="cannot verify HS256"):
        rules.JWTAuth(RSA_KEY.public_key(), algorithms=["HS256"])


def test_hmac_secret_with_public_key_algorithm_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="cannot verify RS256"):
        rules.JWTAuth(SECRET, algorithms=["RS256"])
    with pytest.raises(ConfigurationError, match="cannot verify ES256"):
        rules.JWTAuth(SECRET, algorithms=["ES256"])


def test_short_rsa_key_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ConfigurationError, match="1024 bits"):
        rules.JWTAuth(weak.public_key(), algorithms=["RS256"])


def test_key_of_the_wrong_family_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="cannot verify ES256"):
        rules.JWTAuth(RSA_PUBLIC_PEM, algorithms=["ES256"])


def test_public_private_and_pem_keys_are_accepted() -> None:
    rules.JWTAuth(RSA_PUBLIC_PEM, algorithms=["RS256", "PS256"])
    rules.JWTAuth(RSA_KEY, algorithms=["RS256"])  # reduced to its public half
    rules.JWTAuth(EC_KEY.public_key(), algorithms=["ES256"])


def test_empty_key_and_key_with_jwks_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="needs a key"):
        rules.JWTAuth(None, algorithms=["RS256"])
    with pytest.raises(ConfigurationError, match="not both"):
        rules.JWTAuth(RSA_PUBLIC_PEM, algorithms=["RS256"], jwks_url="http://127.0.0.1:1/jwks")


def test_jwks_needs_public_key_algorithms_and_an_http_url() -> None:
    with pytest.raises(ConfigurationError, match="public-key algorithms"):
        rules.JWTAuth(algorithms=["HS256"], jwks_url="http://127.0.0.1:1/jwks")
    with pytest.raises(ConfigurationError, match="file:///etc/passwd"):
        rules.JWTAuth(algorithms=["RS256"], jwks_url="file:///etc/passwd")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"leeway": -1}, "leeway"),
        ({"require": "exp"}, "require"),
        ({"token": "token"}, "JWTAuth token must be"),
        ({"token": []}, "JWTAuth token must be"),
        (
            {"token": [rules.from_first_message(), rules.from_first_message()]},
            "at most one from_first_message",
        ),
        ({"audience": 5}, "audience"),
        ({"issuer": [""]}, "issuer"),
        ({"refresh": ""}, "refresh"),
        ({"expiring_notice": 0}, "expiring_notice"),
        ({"max_token_bytes": 10}, "max_token_bytes"),
    ],
)
def test_bad_options_are_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        rules.JWTAuth(SECRET, algorithms=["HS256"], **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: rules.from_query(""), "from_query"),
        (lambda: rules.from_cookie(""), "from_cookie"),
        (lambda: rules.from_header("authorization", scheme="Bad Scheme"), "scheme"),
        (lambda: rules.from_subprotocol("two words"), "marker"),
        (lambda: rules.from_first_message(0), "timeout"),
    ],
)
def test_bad_token_sources_are_named(factory: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        factory()  # type: ignore[operator]


def test_jwt_rule_provides_the_subject_and_runs_at_the_auth_stage() -> None:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"])
    assert rule.provides_subject
    assert rule.stage == rules.Stage.AUTH
    guard = Guard(rules=[rule])
    assert guard.plan.connect_rules == (rule,)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("lifespan", 0, "JWKS lifespan must be a positive number of seconds, not 0"),
        ("timeout", float("nan"), "JWKS timeout must be a positive number of seconds, not nan"),
        ("cooldown", -1, "JWKS cooldown must be a number of seconds >= 0, not -1"),
        ("retry", True, "JWKS retry must be a number of seconds >= 0, not True"),
    ],
)
def test_jwks_timing_options_name_the_bad_value(option: str, value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        rules.JWKS("https://example.invalid/jwks.json", **{option: value})  # type: ignore[arg-type]


MS = "looks like milliseconds"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: rules.JWTAuth(SECRET, algorithms=["HS256"], leeway=30_000),
            f"JWTAuth leeway is in seconds (at most 300); 30000 {MS}",
        ),
        (
            lambda: rules.JWTAuth(SECRET, algorithms=["HS256"], leeway=86400 * 365),
            "JWTAuth leeway is in seconds (at most 300); 31536000 is far too long",
        ),
        (
            lambda: rules.JWTAuth(SECRET, algorithms=["HS256"], expiring_notice=60_000),
            f"JWTAuth expiring_notice is in seconds (at most 3600); 60000 {MS}",
        ),
        (
            lambda: rules.from_first_message(10_000),
            f"from_first_message timeout is in seconds (at most 300); 10000 {MS}",
        ),
        (
            lambda: rules.JWKS("https://id.example/jwks", lifespan=300_000),
            "JWKS lifespan is in seconds (at most 86400); 300000 looks like milliseconds",
        ),
        (
            lambda: rules.JWKS("https://id.example/jwks", cooldown=30_000),
            f"JWKS cooldown is in seconds (at most 3600); 30000 {MS}",
        ),
        (
            lambda: rules.JWKS("https://id.example/jwks", timeout=5000),
            f"JWKS timeout is in seconds (at most 60); 5000 {MS}",
        ),
        (
            lambda: rules.JWKS("https://id.example/jwks", retry=5000),
            f"JWKS retry is in seconds (at most 600); 5000 {MS}",
        ),
    ],
)
def test_auth_seconds_that_look_like_milliseconds_are_refused(build: Any, message: str) -> None:
    # A leeway of 30000 accepts tokens for 8 hours past their exp: expiry is off.
    with pytest.raises(ConfigurationError) as info:
        build()
    assert str(info.value) == message


def test_auth_seconds_at_their_bounds_are_accepted() -> None:
    auth = rules.JWTAuth(
        SECRET,
        algorithms=["HS256"],
        leeway=300,
        expiring_notice=3600,
        token=rules.from_first_message(300),
    )
    assert (auth.leeway, auth.expiring_notice) == (300.0, 3600.0)
    jwks = rules.JWKS(
        "https://id.example/jwks", lifespan=86400, cooldown=3600, timeout=60, retry=600
    )
    assert (jwks.lifespan, jwks.cooldown, jwks.timeout, jwks.retry) == (86400, 3600, 60, 600)


@pytest.mark.parametrize(
    ("require", "claims"),
    [
        ((), ("exp",)),
        (["sub"], ("exp", "sub")),
        (("jti", "sub"), ("exp", "jti", "sub")),
        (["sub", "exp"], ("exp", "sub")),
        (iter(["iat"]), ("exp", "iat")),
    ],
    ids=["empty", "sub", "two", "exp listed", "iterator"],
)
def test_exp_stays_required_whatever_require_lists(require: Any, claims: tuple[str, ...]) -> None:
    # require=["sub"] used to replace the default ("exp",): a token without exp never expired.
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], require=require)
    assert rule.require == claims
    assert rule.verify_now(mint(exp_in=None, jti="j", iat=1)) is rule.invalid
    assert rule.verify_now(mint(jti="j", iat=1))["sub"] == "alice"  # type: ignore[index]


def test_require_exp_false_is_the_visible_opt_out(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="ws_guard"):
        rule = rules.JWTAuth(SECRET, algorithms=["HS256"], require=["sub"], require_exp=False)
    assert rule.require == ("sub",)
    assert rule.verify_now(mint(exp_in=None))["sub"] == "alice"  # type: ignore[index]
    assert "require_exp=False" in repr(rule)
    assert "require_exp" not in repr(rules.JWTAuth(SECRET, algorithms=["HS256"]))
    assert [r.getMessage() for r in caplog.records] == [
        "ws_guard JWTAuth(require_exp=False): a token without exp is admitted and never expires"
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"require": ["exp"], "require_exp": False},
            "JWTAuth require=['exp'] lists 'exp' while require_exp=False drops it",
        ),
        ({"require_exp": 0}, "JWTAuth require_exp must be True or False, not 0"),
        ({"require_exp": None}, "JWTAuth require_exp must be True or False, not None"),
        ({"require": "sub"}, "JWTAuth require must be a list of claim names, not 'sub'"),
        ({"require": [""]}, "JWTAuth require must be a list of claim names, not ['']"),
        ({"require": None}, "JWTAuth require must be a list of claim names, not None"),
    ],
    ids=["exp both ways", "exp int", "exp None", "string", "empty name", "None"],
)
def test_require_misconfiguration_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.JWTAuth(SECRET, algorithms=["HS256"], **options)
    assert str(info.value) == message
