"""AllowedOrigins in process: the matcher, its configuration, and where it runs in admission."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.apps import echo
from tests.support.jwt_keys import SECRET, mint
from ws_guard import Close, ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.rules import Rule, Stage
from ws_guard.rules.origin import Origin, parse_origin
from ws_guard.testing import ScriptedWebSocket

SITE = rules.AllowedOrigins(
    [
        "https://app.example.com",
        "http://localhost:8000",
        "https://*.example.org",
        "http://[::1]:3000",
    ]
)


@pytest.mark.parametrize(
    "value",
    [
        "https://app.example.com",
        "HTTPS://APP.Example.COM",  # RFC 6454: scheme and host compare case-insensitively
        "https://app.example.com:443",  # the default port is the same origin
        " https://app.example.com\t",  # OWS around a field value (RFC 9110 section 5.5)
        "http://localhost:8000",
        "https://a.example.org",
        "https://a.b.example.org",
        "https://a.example.org:443",
        "http://[::1]:3000",
    ],
)
def test_admitted_origins(value: str) -> None:
    assert SITE.allows(value)


@pytest.mark.parametrize(
    "value",
    [
        "https://evil.example",
        "http://app.example.com",  # another scheme is another origin
        "https://app.example.com:8443",  # another port too
        "http://localhost",  # port 80, not 8000
        "http://localhost:8001",
        "https://example.org",  # a wildcard covers subdomains, not the domain
        "https://evilexample.org",
        "https://example.org.evil.net",
        "https://a.example.org.evil.net",
        "https://a.example.org:8443",
        "http://a.example.org",
        "https://.example.org",  # an empty label
        "https://a..example.org",
        "https://a.example.org.",  # a trailing dot is another host
        "https://app.example.com/",  # never a path
        "https://app.example.com/ws",
        "https://user@app.example.com",
        "https://app.example.com?x=1",
        "https://app.example.com https://evil.example",  # an origin list (RFC 6454 section 7)
        "https://app.example.com,https://evil.example",
        "app.example.com",
        "//app.example.com",
        "https://app.example.com:0",
        "https://app.example.com:65536",
        "https://app.example.com:99999",
        "https://app.example.com:",
        "https://*.example.org",  # a pattern is not an origin a browser sends
        "https://app.exämple.com",
        "https://app.example.com\x00",
        "null",  # opaque origins only when listed
        "NULL",
        "",
        " ",
        None,  # no header: refused by default
    ],
)
def test_refused_origins(value: str | None) -> None:
    assert not SITE.allows(value)


def test_null_and_missing_are_admitted_only_when_asked() -> None:
    rule = rules.AllowedOrigins(["null"], allow_missing=True)
    assert rule.allows("null")
    assert rule.allows(None)
    assert not rule.allows("https://app.example.com")
    assert not rules.AllowedOrigins(["https://a.example"]).allows("null")


def test_unicode_hosts_in_the_configuration_compare_as_punycode() -> None:
    rule = rules.AllowedOrigins(["https://bücher.example", "https://*.bücher.example"])
    assert rule.allows("https://xn--bcher-kva.example")  # what a browser sends
    assert rule.allows("https://shop.xn--bcher-kva.example")
    assert not rule.allows("https://bücher.example")  # never raw Unicode on the wire


def test_parse_origin_normalises_default_ports_per_scheme() -> None:
    assert parse_origin("https://A.example:443") == Origin("https", "a.example", None)
    assert parse_origin("http://a.example:80") == Origin("http", "a.example", None)
    assert parse_origin("http://a.example:443") == Origin("http", "a.example", 443)
    assert parse_origin("wss://a.example:443") == Origin("wss", "a.example", None)
    assert parse_origin("chrome-extension://abcdef") == Origin("chrome-extension", "abcdef", None)
    assert parse_origin("https://a.example:0443") == Origin("https", "a.example", None)


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9\-]{0,8}[a-z0-9])?", fullmatch=True)


@given(st.lists(LABEL, min_size=1, max_size=4), st.sampled_from(["", "x", "-evil"]))
def test_wildcard_matches_exactly_the_subdomains(labels: list[str], glue: str) -> None:
    rule = rules.AllowedOrigins(["https://*.example.com"])
    sub = ".".join(labels)
    assert rule.allows(f"https://{sub}.example.com")
    assert rule.allows(f"https://{sub}.example.com:443")
    assert not rule.allows(f"https://{sub}.example.com:444")
    assert not rule.allows(f"http://{sub}.example.com")
    assert not rule.allows(f"https://{sub}{glue}example.com")
    assert not rule.allows(f"https://example.com.{sub}")
    assert not rule.allows(f"https://{sub}.example.com.{sub}")
    assert not rule.allows(f"https://{sub}.example.com/{sub}")


@given(st.text(max_size=60))
def test_any_header_value_is_a_plain_answer(value: str) -> None:
    allowed = SITE.allows(value)  # never raises
    assert allowed is (parse_origin(value.strip(" \t")) is not None and allowed)


@pytest.mark.parametrize(
    ("origins", "shown"),
    [
        ([], "at least one origin"),
        ("*", "'*'"),
        (["*"], "'*'"),
        (["*://*"], "'*://*'"),
        (["https://*"], "'https://*'"),
        ("https://a.example", "'https://a.example'"),  # one string, not a list
        (None, "None"),
        ([42], "42"),
        (["a.example.com"], "'a.example.com'"),
        (["*.example.com"], "'*.example.com'"),
        (["://a.example.com"], "'://a.example.com'"),
        (["https://a.example.com/"], "'https://a.example.com/'"),
        (["https://a.example.com/ws"], "'https://a.example.com/ws'"),
        (["https://a.example.com?x"], "'https://a.example.com?x'"),
        (["https://user@a.example.com"], "'https://user@a.example.com'"),
        (["https://a.example.com:99999"], "'https://a.example.com:99999'"),
        (["https://a.example.com "], "'https://a.example.com '"),
        (["https://*.com"], "'https://*.com'"),
        (["https://a.*.example.com"], "'https://a.*.example.com'"),
        (["https://*example.com"], "'https://*example.com'"),
        (["https://*.[::1]"], "'https://*.[::1]'"),
    ],
)
def test_bad_configuration_names_the_value(origins: object, shown: str) -> None:
    with pytest.raises(ConfigurationError, match=None) as info:
        rules.AllowedOrigins(origins)  # type: ignore[arg-type]
    assert shown in str(info.value)


def test_allow_missing_must_be_a_bool() -> None:
    with pytest.raises(ConfigurationError, match="'yes'"):
        rules.AllowedOrigins(["https://a.example"], allow_missing="yes")  # type: ignore[arg-type]


def cookie_jwt(*sources: rules.TokenSource) -> rules.JWTAuth:
    return rules.JWTAuth(SECRET, algorithms=["HS256"], token=list(sources))


@pytest.mark.parametrize(
    "sources",
    [
        (rules.from_cookie("session"),),
        (rules.from_header(), rules.from_cookie("session")),
        (rules.from_subprotocol(), rules.from_first_message(), rules.from_cookie("sid")),
    ],
)
def test_cookie_auth_without_an_origin_rule_is_refused(
    sources: tuple[rules.TokenSource, ...],
) -> None:
    with pytest.raises(ConfigurationError) as info:
        Guard(rules=[cookie_jwt(*sources)])
    message = str(info.value)
    assert "FromCookie(name=" in message
    assert "cross-site WebSocket hijacking" in message
    assert "rules.AllowedOrigins(" in message


def test_cookie_auth_with_an_origin_rule_or_without_cookies_is_accepted() -> None:
    Guard(rules=[cookie_jwt(rules.from_cookie("s")), rules.AllowedOrigins(["https://a.example"])])
    Guard(
        rules=[
            rules.AllowedOrigins(["https://a.example"], enforce=False),  # shadow: explicit
            cookie_jwt(rules.from_cookie("s")),
        ]
    )
    Guard(rules=[cookie_jwt(rules.from_header(), rules.from_query())])


def guarded(*extra: Rule, origins: tuple[str, ...] = ("https://app.example.com",)) -> Guard:
    return Guard(
        rules=[
            *extra,
            cookie_jwt(rules.from_cookie("session")),
            rules.AllowedOrigins(list(origins)),
        ]
    )


def handshake(guard: Guard, *origins: str, cookie: str | None = None) -> ScriptedWebSocket:
    headers = [(b"origin", o.encode("latin-1")) for o in origins]
    headers.append((b"cookie", f"session={cookie or mint('alice')}".encode()))
    return ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), headers=headers)


async def refused(ws: ScriptedWebSocket, reason: str = "origin_not_allowed") -> None:
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=1008, reason=reason)
    await ws.finished()


def test_the_rule_runs_first_among_admission_rules() -> None:
    guard = guarded(rules.ConnectRate("5/minute"), rules.MaxConnectionsPerKey(2))
    order = [type(rule).__name__ for rule, _ in guard.plan.admission_rules]
    # PeerRequired: the by_ip keys need a client address (refused before any count).
    assert order == [
        "AllowedOrigins",
        "PeerRequired",
        "ConnectRate",
        "JWTAuth",
        "MaxConnectionsPerKey",
    ]
    assert Stage.ORIGIN < Stage.CONNECT_RATE < Stage.AUTH


async def test_a_cross_site_cookie_handshake_is_refused_before_auth_and_counted() -> None:
    guard = guarded()
    # A valid cookie: only the origin check can refuse it.
    await refused(handshake(guard, "https://evil.example"))
    # An invalid cookie from a foreign page: the origin check speaks first.
    await refused(handshake(guard, "https://evil.example", cookie="junk"))
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"origin_not_allowed": 2}
    assert snap.closes_by_code == {1008: 2}
    assert snap.handshakes_rejected == 2


async def test_several_origin_lines_are_refused_even_when_each_is_allowed() -> None:
    guard = guarded()
    await refused(handshake(guard, "https://app.example.com", "https://app.example.com"))
    await refused(handshake(guard, "https://app.example.com", "https://evil.example"))
    assert guard.metrics.snapshot().closes_by_rule == {"origin_not_allowed": 2}


async def test_an_allowed_origin_reaches_auth() -> None:
    guard = guarded()
    ws = handshake(guard, "https://app.example.com")
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    await ws.disconnect()
    await ws.finished()
    await refused(handshake(guard, "https://app.example.com", cookie="junk"), "token_invalid")
    assert guard.metrics.snapshot().closes_by_rule == {"token_invalid": 1}


async def test_a_refusal_spends_no_connect_rate_budget() -> None:
    guard = guarded(rules.ConnectRate("1/minute"))
    for _ in range(3):
        await refused(handshake(guard, "https://evil.example"))
    ws = handshake(guard, "https://app.example.com")
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"origin_not_allowed": 3}


async def test_shadow_mode_counts_and_admits() -> None:
    guard = Guard(rules=[rules.AllowedOrigins(["https://app.example.com"], enforce=False)])
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), headers=[(b"origin", b"null")])
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"origin_not_allowed": 1}
    assert snap.closes_by_rule == {}


async def test_a_named_rule_counts_under_its_name_and_http_mode_answers_403() -> None:
    guard = Guard(
        rules=[rules.AllowedOrigins(["https://app.example.com"], name="origins")], reject="http"
    )
    ws = ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard), headers=[(b"origin", b"https://evil.example")]
    )
    await ws.connect()
    await ws.expect("websocket.http.response.start", status=403)
    await ws.expect("websocket.http.response.body", body=b"origin_not_allowed")
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"origins": 1}


def test_close_decision_is_a_plain_value() -> None:
    refusal = rules.AllowedOrigins(["https://a.example"])._refusal
    assert refusal == Close(1008, "origin_not_allowed", "origin_not_allowed")
