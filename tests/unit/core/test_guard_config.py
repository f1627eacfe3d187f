"""Every misconfiguration fails at construction, naming the bad value."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.apps import echo
from ws_guard import (
    Close,
    ConfigurationError,
    Guard,
    NotStartedError,
    WSGuardError,
    WSGuardMiddleware,
    load,
    rules,
)
from ws_guard.load import LoadGauge


class Named(LoadGauge):
    def value(self) -> float:
        return 0.0


CASES: list[tuple[str, Callable[[], Any], str]] = [
    # Guard
    ("rules not a list", lambda: Guard(rules=None), "None"),  # type: ignore[arg-type]
    ("rules a string", lambda: Guard(rules="MaxMessageSize"), "'MaxMessageSize'"),  # type: ignore[arg-type]
    ("rule not a Rule", lambda: Guard(rules=[42]), "42"),  # type: ignore[list-item]
    ("gauge not a gauge", lambda: Guard(load=[rules.MaxMessageSize(1)]), "MaxMessageSize"),  # type: ignore[list-item]
    ("storage not a URI", lambda: Guard(storage="localhost:6379"), "'localhost:6379'"),
    ("storage not a str", lambda: Guard(storage=None), "None"),  # type: ignore[arg-type]
    ("paths a string", lambda: Guard(paths="/ws"), "'/ws'"),
    ("path without slash", lambda: Guard(paths=["ws"]), "'ws'"),
    ("path empty", lambda: Guard(paths=[""]), "''"),
    ("path not a str", lambda: Guard(paths=[b"/ws"]), "b'/ws'"),  # type: ignore[list-item]
    ("proxies a string", lambda: Guard(trusted_proxies="10.0.0.1"), "'10.0.0.1'"),
    ("proxies None", lambda: Guard(trusted_proxies=None), "None"),  # type: ignore[arg-type]
    ("proxy not an address", lambda: Guard(trusted_proxies=["proxy.local"]), "'proxy.local'"),
    ("proxy not a str", lambda: Guard(trusted_proxies=[10]), "10"),  # type: ignore[list-item]
    ("reject mode", lambda: Guard(reject="403"), "'403'"),
    ("storage error mode", lambda: Guard(on_storage_error="retry"), "'retry'"),
    ("on_close not callable", lambda: Guard(on_close="log"), "'log'"),  # type: ignore[arg-type]
    ("middleware guard", lambda: WSGuardMiddleware(echo, guard={"rules": []}), "{'rules': []}"),  # type: ignore[arg-type]
    # Rule base
    ("enforce not bool", lambda: rules.MaxMessageSize(1, enforce="no"), "'no'"),  # type: ignore[arg-type]
    ("rule name empty", lambda: rules.MaxMessageSize(1, name=""), "''"),
    ("rule name not str", lambda: rules.MaxMessageSize(1, name=5), "5"),  # type: ignore[arg-type]
    # message rules
    ("size zero", lambda: rules.MaxMessageSize(0), "0"),
    ("size negative", lambda: rules.MaxMessageSize(-1), "-1"),
    ("size bool", lambda: rules.MaxMessageSize(True), "True"),
    ("size float", lambda: rules.MaxMessageSize(1.5), "1.5"),  # type: ignore[arg-type]
    ("size str", lambda: rules.MaxMessageSize("64k"), "'64k'"),  # type: ignore[arg-type]
    ("types not bool", lambda: rules.MessageTypes(text=1), "1"),  # type: ignore[arg-type]
    ("types refuse all", lambda: rules.MessageTypes(text=False, binary=False), "binary=False"),
    ("content not callable", lambda: rules.Content("no links", name="x"), "'no links'"),  # type: ignore[arg-type]
    ("content name space", lambda: rules.Content(bool, name="no links"), "'no links'"),
    ("content name empty", lambda: rules.Content(bool, name=""), "''"),
    ("content name long", lambda: rules.Content(bool, name="n" * 65), "n" * 65),
    ("content name not ascii", lambda: rules.Content(bool, name="größe"), "'größe'"),
    ("content name None", lambda: rules.Content(bool, name=None), "None"),  # type: ignore[arg-type]
    ("pattern invalid", lambda: rules.Pattern("(unclosed"), "'(unclosed'"),
    ("pattern bytes", lambda: rules.Pattern(re.compile(b"x")), "b'x'"),  # type: ignore[arg-type]
    ("pattern name bad", lambda: rules.Pattern("x", name="a b"), "'a b'"),
    ("json validator", lambda: rules.Json(validator="schema.json"), "'schema.json'"),  # type: ignore[arg-type]
    ("json name bad", lambda: rules.Json(name="a/b"), "'a/b'"),
    # gauges
    ("count zero", lambda: load.ConnectionCount(limit=0), "0"),
    ("count float", lambda: load.ConnectionCount(limit=1.5), "1.5"),  # type: ignore[arg-type]
    ("count bool", lambda: load.ConnectionCount(limit=True), "True"),
    ("count inf", lambda: load.ConnectionCount(limit=float("inf")), "inf"),  # type: ignore[arg-type]
    ("gauge name", lambda: Named(1.0, name=""), "''"),
    ("gauge enforce", lambda: load.ConnectionCount(limit=1, enforce=None), "None"),  # type: ignore[arg-type]
    # settings in seconds are finite
    ("heartbeat nan", lambda: rules.MaxConnectionsPerKey(2, heartbeat=float("nan")), "nan"),
    ("heartbeat inf", lambda: rules.MaxConnectionsPerKey(2, heartbeat=float("inf")), "inf"),
    ("first message timeout inf", lambda: rules.from_first_message(float("inf")), "inf"),
    (
        "jwt leeway nan",
        lambda: rules.JWTAuth("k" * 32, algorithms=["HS256"], leeway=float("nan")),
        "nan",
    ),
    # close decisions
    ("close 1004", lambda: Close(1004, "x", "x"), "1004"),
    ("close 1005", lambda: Close(1005, "x", "x"), "1005"),
    ("close 1006", lambda: Close(1006, "x", "x"), "1006"),
    ("close 1015", lambda: Close(1015, "x", "x"), "1015"),
    ("close 999", lambda: Close(999, "x", "x"), "999"),
    ("close 1016", lambda: Close(1016, "x", "x"), "1016"),
    ("close 2999", lambda: Close(2999, "x", "x"), "2999"),
    ("close 5000", lambda: Close(5000, "x", "x"), "5000"),
    ("close str code", lambda: Close("1008", "x", "x"), "'1008'"),  # type: ignore[arg-type]
    ("close bool code", lambda: Close(True, "x", "x"), "True"),
    ("close reason None", lambda: Close(1008, None, "x"), "None"),  # type: ignore[arg-type]
    ("breach reserved", lambda: rules.MaxMessageSize(1).breach(1006, "x"), "1006"),
]


@pytest.mark.parametrize(("factory", "bad"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_configuration_error_names_the_bad_value(factory: Callable[[], Any], bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        factory()
    assert bad in str(info.value)


def test_configuration_error_is_a_value_error_and_a_ws_guard_error() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationError, WSGuardError)


def test_rule_bind_runs_at_construction() -> None:
    class NeedsSubject(rules.Rule):
        def bind(self, guard: Guard) -> None:
            if not any(rule.provides_subject for rule in guard.rules):
                raise ConfigurationError(f"{self!r} needs a rule that provides a subject")

    with pytest.raises(ConfigurationError, match="NeedsSubject"):
        Guard(rules=[NeedsSubject()])


@pytest.mark.parametrize(
    "code", [1000, 1001, 1003, 1007, 1008, 1009, 1011, 1012, 1013, 1014, 3000, 4999]
)
def test_sendable_codes_are_accepted(code: int) -> None:
    assert Close(code, "r", "r").code == code


def test_valid_configuration_builds() -> None:
    guard = Guard(
        rules=(rules.MaxMessageSize(10), rules.MessageTypes(binary=False)),
        load=iter([load.ConnectionCount(limit=5)]),
        storage="redis://localhost:6379/0",
        paths=("/ws", "/chat/"),
        trusted_proxies=["10.0.0.0/8", " ::1 ", "192.168.1.1"],
        reject="http",
        on_storage_error="deny",
        on_close=print,
    )
    assert len(guard.rules) == 2
    assert len(guard.gauges) == 1
    assert guard.paths == ("/ws", "/chat/")
    assert [str(n) for n in guard.trusted_proxies] == ["10.0.0.0/8", "::1/128", "192.168.1.1/32"]
    assert "MaxMessageSize" in repr(guard)


# -- traps that would switch protection off without a word ----------------------


@pytest.mark.parametrize("paths", [[], (), iter([])], ids=["list", "tuple", "iterator"])
def test_empty_paths_are_refused(paths: Any) -> None:
    # An empty list read from an unset setting guards nothing; None guards every path.
    with pytest.raises(ConfigurationError) as info:
        Guard(paths=paths)
    assert "paths must name at least one prefix, not " in str(info.value)
    assert "leave paths=None (the default) to guard every WebSocket path" in str(info.value)


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/ws?token=1", "not '/ws?token=1'"),
        ("/ws#top", "not '/ws#top'"),
        ("/ws ", "not '/ws '"),
        ("/ws\n", "not '/ws\\n'"),
        (" /ws", "must start with '/', not ' /ws'"),  # from "/a, /ws".split(",")
        ("ws://host/ws", "must start with '/', not 'ws://host/ws'"),
    ],
)
def test_paths_that_can_never_match_are_refused(path: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Guard(paths=["/chat", path])
    assert fragment in str(info.value)


def _objects() -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("MaxMessageSize", lambda: rules.MaxMessageSize(10)),
        ("MaxConnectionsPerKey", lambda: rules.MaxConnectionsPerKey(3)),
        ("MessageRate", lambda: rules.MessageRate("5/second")),
        ("JWTAuth", lambda: rules.JWTAuth("k" * 32, algorithms=["HS256"])),
        ("ConnectionCount", lambda: load.ConnectionCount(limit=5)),
        ("EventLoopLag", lambda: load.EventLoopLag()),
        ("Gauge", lambda: load.Gauge(lambda: 1.0, 5.0, name="queue")),
    ]


@pytest.mark.parametrize(("kind", "make"), _objects(), ids=[k for k, _ in _objects()])
def test_one_object_listed_twice_in_a_guard_is_refused(kind: str, make: Callable[[], Any]) -> None:
    # A connection cap listed twice would take two slots per connection and give back one.
    item = make()
    other = (
        rules.MessageTypes(binary=False) if isinstance(item, rules.Rule) else Named(1.0, name="n")
    )
    what, base = ("rules", "Rule") if isinstance(item, rules.Rule) else ("load", "LoadGauge")
    with pytest.raises(ConfigurationError) as info:
        Guard(**{what: [item, other, item]})
    assert str(info.value) == f"{what} lists {item!r} twice; give each {base} object once"
    assert kind in str(info.value)


STATEFUL: list[tuple[str, Callable[[], Any]]] = [
    ("MessageRate", lambda: rules.MessageRate("5/second")),
    ("ConnectRate", lambda: rules.ConnectRate("5/minute")),
    ("MaxConnectionsPerKey", lambda: rules.MaxConnectionsPerKey(3)),
    ("ConnectionCount", lambda: load.ConnectionCount(limit=5)),
    ("EventLoopLag", lambda: load.EventLoopLag()),
    ("Gauge", lambda: load.Gauge(lambda: 1.0, 5.0, name="queue")),
]


@pytest.mark.parametrize(("kind", "make"), STATEFUL, ids=[k for k, _ in STATEFUL])
def test_stateful_object_in_two_guards_is_refused(kind: str, make: Callable[[], Any]) -> None:
    # Counters, slots and gauge readings belong to the guard the object was bound
    # to: a ConnectionCount in two guards would count only the second one's.
    item = make()
    what = "rules" if isinstance(item, rules.Rule) else "load"
    Guard(**{what: [item]})
    with pytest.raises(ConfigurationError) as info:
        Guard(**{what: [item]})
    assert str(info.value) == f"{item!r} is already part of another Guard; make one per Guard"
    assert kind in str(info.value)


def test_gauge_bound_again_to_its_own_guard_is_accepted() -> None:
    gauge = load.ConnectionCount(limit=5)
    guard = Guard(load=[gauge])
    gauge.bind(guard)
    assert gauge.reading().limit == 5.0


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (
            lambda: Guard(drain_window=10_000),
            "drain_window is in seconds (at most 3600); 10000 looks like milliseconds",
        ),
        (
            lambda: Guard(app_exit_timeout=5000),
            "app_exit_timeout is in seconds (at most 600); 5000 looks like milliseconds",
        ),
        (lambda: Guard(drain_window=-1), "drain_window must be a number of seconds >= 0, not -1"),
    ],
    ids=["drain_window ms", "app_exit_timeout ms", "drain_window negative"],
)
def test_guard_durations_in_milliseconds_are_refused(
    make: Callable[[], Any], fragment: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "proxy",
    ["0.0.0.0/0", "::/0", " 0.0.0.0/0 ", "10.1.2.3/0"],
    ids=["v4", "v6", "blanks", "host bits"],
)
def test_trusting_every_address_as_a_proxy_is_refused(proxy: str) -> None:
    # Every client could then write the X-Forwarded-For that by_ip counts.
    with pytest.raises(ConfigurationError) as info:
        Guard(trusted_proxies=["10.0.0.0/8", proxy])
    assert str(info.value) == (
        f"trusted_proxies entry {proxy!r} trusts every address, so any client could "
        "forge X-Forwarded-For; name the proxies' own addresses or subnet"
    )


@pytest.mark.parametrize("make", ["status_app", "metrics_app"])
@pytest.mark.parametrize("guard", [None, "guard", {"rules": []}], ids=["None", "str", "dict"])
def test_status_and_metrics_apps_need_a_guard(make: str, guard: Any) -> None:
    import ws_guard

    with pytest.raises(ConfigurationError) as info:
        getattr(ws_guard, make)(guard)
    assert str(info.value) == f"{make} needs a Guard, not {guard!r}"


def test_use_before_startup_raises_not_started_error() -> None:
    guard = Guard(rules=[rules.ConnectRate("5/minute", key=rules.by_ip)])
    with pytest.raises(NotStartedError, match=r"before Guard\.startup\(\)") as caught:
        guard.storage.limits  # noqa: B018 - the property is what raises
    assert isinstance(caught.value, RuntimeError)
    assert isinstance(caught.value, WSGuardError)
