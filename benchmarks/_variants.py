"""Guard variants the benchmarks compare against the bare app.

Each variant is a factory that builds a fresh :class:`ws_guard.Guard` inside
the process that serves (the echo server subprocess, or the in-process
driver of ``per_message.py``), plus what a client must add to its URL.

To add a variant, write a ``_build_<name>`` function and add one
``Variant(...)`` line to ``VARIANTS``. Variants that need a rule not yet in
ws_guard are listed in the comment at the bottom and added when it lands.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Benchmark this checkout's ws_guard, not whatever copy is installed.
SRC = str(Path(__file__).resolve().parent.parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from ws_guard import Guard, load, rules  # noqa: E402

#: The message-size limit of the ``rules`` variant (far above any benchmark message).
MAX_MESSAGE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Variant:
    """A guard configuration under test."""

    description: str
    build: Callable[[], Guard]
    #: Query string (without ``?``) for client connection ``i``, e.g. a JWT per user.
    client_query: Callable[[int], str] | None = None


def _message_rules() -> list[rules.Rule]:
    """The three message rules of the foundation benchmark (all pass on echo traffic)."""
    return [
        rules.MaxMessageSize(MAX_MESSAGE_BYTES),
        rules.MessageTypes(text=True, binary=False),
        rules.Content(lambda m: "http://" not in m, name="no_links"),
    ]


def _build_rules() -> Guard:
    return Guard(rules=_message_rules())


#: Far above any benchmark rate: the benchmark measures checking, not closing.
UNREACHED_RATE = "100000000/minute"
#: Lease cap of the Redis variant: one Redis round trip per 100 messages per user
#: (the default, a tenth of the limit, would hide Redis almost entirely here).
REDIS_LEASE = 100
#: Users the Redis variant spreads its connections over.
BENCH_USERS = 10


#: HS256 secret of the variants that authenticate (benchmark only).
SECRET = "ws_guard-benchmark-secret-0123456789abcdef"


def token_for(subject: str, **claims: object) -> str:
    """A JWT for *subject* (and *claims*), valid for an hour: longer than any benchmark run."""
    import jwt

    payload = {"sub": subject, "exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def fresh_client_query(i: int, serial: int) -> str:
    """Query for client loop *i*'s handshake number *serial*: a token no handshake used before.

    For ``--fresh-tokens`` runs of the variants that authenticate: the
    ``jti`` makes each token unique, so a verified-token cache never hits.
    """
    return f"token={token_for(f'user{i}', jti=str(serial))}"


def _build_rate() -> Guard:
    return Guard(rules=[*_message_rules(), rules.MessageRate(UNREACHED_RATE)])


def _build_rate_kinds() -> Guard:
    # The benchmark's messages are no JSON "typing" or "chat": the common
    # case of per-kind rates, a message of another kind, which is not parsed.
    return Guard(
        rules=[
            *_message_rules(),
            rules.MessageRate(UNREACHED_RATE),
            rules.MessageRate(UNREACHED_RATE, match=rules.json_type("typing"), name="typing"),
            rules.MessageRate(UNREACHED_RATE, match=rules.json_type("chat"), name="chat"),
        ]
    )


def _build_rate_ip() -> Guard:
    return Guard(rules=[*_message_rules(), rules.MessageRate(UNREACHED_RATE, key=rules.by_ip)])


def _build_rate_user() -> Guard:
    url = os.environ.get("WS_GUARD_BENCH_REDIS")
    if not url:
        raise SystemExit("the rate_user variant needs WS_GUARD_BENCH_REDIS=redis://host:port/db")
    auth = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token"))
    rate = rules.MessageRate(UNREACHED_RATE, key=rules.by_user, lease=REDIS_LEASE)
    return Guard(rules=[auth, *_message_rules(), rate], storage=url)


def _build_bytes() -> Guard:
    return Guard(rules=[*_message_rules(), rules.ByteRate(UNREACHED_RATE)])


def _build_bytes_ip() -> Guard:
    return Guard(rules=[*_message_rules(), rules.ByteRate(UNREACHED_RATE, key=rules.by_ip)])


def _build_bytes_warn() -> Guard:
    return Guard(rules=[*_message_rules(), rules.ByteRate(UNREACHED_RATE, warn_at=0.9)])


def _build_rate_warn() -> Guard:
    return Guard(rules=[*_message_rules(), rules.MessageRate(UNREACHED_RATE, warn_at=0.9)])


def _jwt_auth(verified_cache: int = 0) -> rules.JWTAuth:
    return rules.JWTAuth(
        SECRET, algorithms=["HS256"], token=rules.from_query("token"), verified_cache=verified_cache
    )


#: ``verified_cache`` of the ``*_cached`` variants: far more tokens than a run uses.
BENCH_CACHE = 10_000


def _build_jwt() -> Guard:
    return Guard(rules=[_jwt_auth(), *_message_rules()])


#: Far beyond any benchmark run: the deadlines are armed but never fire.
IDLE_SECONDS = 3600.0
LIFETIME_SECONDS = 86_400.0


def _build_lifetime() -> Guard:
    return Guard(
        rules=[
            *_message_rules(),
            rules.IdleTimeout(IDLE_SECONDS),
            rules.MaxLifetime(LIFETIME_SECONDS),
        ]
    )


#: Far above any echo round trip: the benchmark measures watching sends, not closing.
UNREACHED_SEND_WAIT = 5.0


def _build_counted() -> Guard:
    return Guard(rules=_message_rules(), count_messages=True)


def _build_slow() -> Guard:
    return Guard(rules=[*_message_rules(), rules.SlowConsumer(UNREACHED_SEND_WAIT)])


def lag_limit() -> float:
    """The ``EventLoopLag`` limit of the variants: 0.25 s, or ``WS_GUARD_BENCH_LAG_LIMIT``.

    Under valgrind the loop runs some fifty times slower and lags past
    0.25 s, so the gauge would shed (1013) what the count is about; a count
    raises the limit, and the gauge's check costs the same at any limit.
    """
    return float(os.environ.get("WS_GUARD_BENCH_LAG_LIMIT", "0.25"))


def _build_all() -> Guard:
    return Guard(
        rules=[_jwt_auth(), *_message_rules(), rules.MessageRate(UNREACHED_RATE)],
        load=[load.ConnectionCount(limit=10_000), load.EventLoopLag(limit=lag_limit())],
    )


def _build_rate_jwt() -> Guard:
    return Guard(rules=[_jwt_auth(), *_message_rules(), rules.MessageRate(UNREACHED_RATE)])


def _build_rate_jwt_cached() -> Guard:
    return Guard(
        rules=[_jwt_auth(BENCH_CACHE), *_message_rules(), rules.MessageRate(UNREACHED_RATE)]
    )


def _build_full_cached() -> Guard:
    return Guard(
        rules=[_jwt_auth(BENCH_CACHE), *_message_rules(), rules.MessageRate(UNREACHED_RATE)],
        load=[load.ConnectionCount(limit=10_000), load.EventLoopLag(limit=lag_limit())],
    )


def _build_conn_count() -> Guard:
    return Guard(
        rules=[_jwt_auth(), *_message_rules(), rules.MessageRate(UNREACHED_RATE)],
        load=[load.ConnectionCount(limit=10_000)],
    )


#: Far above the handshake benchmark's loops per user: the cap is checked, never reached.
UNREACHED_CAP = 1000


def _build_full_redis() -> Guard:
    url = os.environ.get("WS_GUARD_BENCH_REDIS")
    if not url:
        raise SystemExit("the full_redis variant needs WS_GUARD_BENCH_REDIS=redis://host:port/db")
    return Guard(
        rules=[
            _jwt_auth(),
            *_message_rules(),
            rules.MessageRate(UNREACHED_RATE),
            rules.MaxConnectionsPerKey(UNREACHED_CAP, key=rules.by_user),
            rules.ConnectRate(UNREACHED_RATE, key=rules.by_ip),
        ],
        load=[load.ConnectionCount(limit=10_000), load.EventLoopLag(limit=lag_limit())],
        storage=url,
    )


VARIANTS: dict[str, Variant] = {
    "none": Variant("Guard() with no rules: the middleware's own fixed cost", Guard),
    "rules": Variant(
        "MaxMessageSize(64 KiB) + MessageTypes(text only) + Content(no 'http://')",
        _build_rules,
    ),
    "rate": Variant(
        f"rules + MessageRate({UNREACHED_RATE!r}): per connection",
        _build_rate,
    ),
    "rate_kinds": Variant(
        f"rate + two per-kind MessageRate({UNREACHED_RATE!r}, match=json_type(...)) that "
        "the benchmark's messages do not match",
        _build_rate_kinds,
    ),
    "rate_ip": Variant(
        f"rules + MessageRate({UNREACHED_RATE!r}, key=by_ip) on memory storage "
        "(every benchmark connection shares 127.0.0.1)",
        _build_rate_ip,
    ),
    "rate_user": Variant(
        f"rules + JWTAuth(HS256, ?token=) + MessageRate({UNREACHED_RATE!r}, key=by_user, "
        f"lease={REDIS_LEASE}) on Redis (WS_GUARD_BENCH_REDIS), connections spread over "
        f"{BENCH_USERS} users",
        _build_rate_user,
        client_query=lambda i: f"token={token_for(f'user{i % BENCH_USERS}')}",
    ),
    "jwt": Variant(
        "rules + JWTAuth(HS256, ?token=, refresh on): one token per connection",
        _build_jwt,
        client_query=lambda i: f"token={token_for(f'user{i}')}",
    ),
    "counted": Variant(
        "rules + Guard(count_messages=True): messages in and out counted per connection",
        _build_counted,
    ),
    "slow": Variant(
        f"rules + SlowConsumer({UNREACHED_SEND_WAIT}): every app send timed",
        _build_slow,
    ),
    "all": Variant(
        "jwt + MessageRate per connection + ConnectionCount(10 000) + EventLoopLag(0.25 s) "
        "sampling every 50 ms",
        _build_all,
        client_query=lambda i: f"token={token_for(f'user{i}')}",
    ),
    "rate_jwt": Variant(
        "rules + MessageRate per connection + JWTAuth(HS256, ?token=): full without gauges",
        _build_rate_jwt,
        client_query=lambda i: f"token={token_for(f'user{i}')}",
    ),
    "conn_count": Variant(
        "jwt + MessageRate per connection + ConnectionCount(10 000): full without the lag gauge",
        _build_conn_count,
        client_query=lambda i: f"token={token_for(f'user{i}')}",
    ),
    "full": Variant(
        "the handshake benchmark's full policy on memory storage: rules + MessageRate per "
        "connection + JWTAuth(HS256, ?token=) + ConnectionCount(10 000) + EventLoopLag(0.25 s)",
        _build_all,
        client_query=lambda i: f"token={token_for(f'user{i}')}",
    ),
    "rate_jwt_cached": Variant(
        f"rate_jwt with JWTAuth(verified_cache={BENCH_CACHE}): a reused token skips PyJWT",
        _build_rate_jwt_cached,
        client_query=lambda i: f"token={token_for(f'user{i}')}",
    ),
    "full_cached": Variant(
        f"full with JWTAuth(verified_cache={BENCH_CACHE}): a reused token skips PyJWT",
        _build_full_cached,
        client_query=lambda i: f"token={token_for(f'user{i}')}",
    ),
    "full_redis": Variant(
        f"full + MaxConnectionsPerKey({UNREACHED_CAP}, key=by_user) + "
        f"ConnectRate({UNREACHED_RATE!r}, key=by_ip) on Redis (WS_GUARD_BENCH_REDIS)",
        _build_full_redis,
        client_query=lambda i: f"token={token_for(f'user{i}')}",
    ),
    "lifetime": Variant(
        f"rules + IdleTimeout({IDLE_SECONDS:g}) + MaxLifetime({LIFETIME_SECONDS:g}): "
        "a clock read and a store per message",
        _build_lifetime,
    ),
    "bytes": Variant(f"rules + ByteRate({UNREACHED_RATE!r}): bytes per connection", _build_bytes),
    "bytes_ip": Variant(
        f"rules + ByteRate({UNREACHED_RATE!r}, key=by_ip) on memory storage", _build_bytes_ip
    ),
    "bytes_warn": Variant(
        f"rules + ByteRate({UNREACHED_RATE!r}, warn_at=0.9): per connection, never warns",
        _build_bytes_warn,
    ),
    "rate_warn": Variant(
        f"rules + MessageRate({UNREACHED_RATE!r}, warn_at=0.9): checked on its own",
        _build_rate_warn,
    ),
    # Add variants here. Limits must be far above the benchmark's rate: the
    # benchmark measures the cost of checking, not of closing.
}


def variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise SystemExit(
            f"unknown guard variant {name!r}; choose from {', '.join(VARIANTS)}"
        ) from None
