"""Where one guarded handshake's instructions go: in-process, no network.

Drives the raw-ASGI echo app of ``per_message.py`` through its in-process
fake server, one connection at a time: ``websocket.connect``, one text
message, the client's close. The bare app's cost is subtracted, so what
remains is ws_guard's own work for one connection (middleware set-up,
admission, the message, the finish).

    python benchmarks/handshake_profile.py --instructions          # callgrind, by variant
    python benchmarks/handshake_profile.py --cprofile --guard full # cProfile, top functions

``--instructions`` runs this script under valgrind's callgrind twice per
variant, with ``--short`` and ``--long`` connections; the difference of the
totals divided by the difference in connections is the instructions of one
(startup and imports cancel out). Variants are added one rule or gauge at
a time (``none``, ``rules``, ``rate``, ``rate_jwt``, ``conn_count``,
``full``), so the differences between rows say what each part costs.

Every connection of a variant that authenticates presents the same token,
as a client reconnecting does; with ``--fresh-tokens`` each presents one no
connection used before (minted beforehand, outside the counted process, and
read from a file: a line split per connection), so a verified-token cache
(``rate_jwt_cached``, ``full_cached``) never hits.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from _children import exit_on_sigterm, spawn
from _variants import SRC, VARIANTS, fresh_client_query, variant
from per_message import FakeServer, echo, run_loop

HERE = Path(__file__).resolve()
BARE = "bare"
DEFAULT_GUARDS = ("none", "rules", "rate", "rate_jwt", "conn_count", "full")
#: Connections run before counting: imports, first-call caches, guard startup.
WARMUP = 50


def build(name: str) -> tuple[object, str]:
    """The app for *name* and the query string its connection uses."""
    from ws_guard import WSGuardMiddleware

    if name == BARE:
        return echo, ""
    chosen = variant(name)
    query = chosen.client_query(0) if chosen.client_query else ""
    return WSGuardMiddleware(echo, guard=chosen.build()), query


async def connections(name: str, count: int, tokens: str | None = None) -> None:
    app, query = build(name)
    queries = Path(tokens).read_text().split("\n") if tokens else None
    server = FakeServer(1, 64, yield_each=True)
    for i in range(WARMUP + count):
        await server.run(app, query if queries is None else queries[i])
        if server.sent != 2:  # the accept and the echo
            raise SystemExit(f"{name}: connection not echoed ({server.sent} sends)")


def count_instructions(name: str, count: int, fresh: bool = False) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        tokens: list[str] = []
        if fresh and name != BARE and variant(name).client_query is not None:
            queries = Path(tmp) / "queries.txt"
            queries.write_text("\n".join(fresh_client_query(0, i) for i in range(WARMUP + count)))
            tokens = ["--tokens", str(queries)]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
            WS_GUARD_BENCH_LAG_LIMIT="10",  # the most it takes: valgrind must not trip it
        )
        proc = spawn(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--quiet",
                sys.executable,
                str(HERE),
                "--run",
                name,
                "--count",
                str(count),
                *tokens,
            ],
            env=env,
        )
        if proc.wait(600) != 0:
            raise SystemExit(f"{name}: the run under callgrind failed (exit {proc.returncode})")
        match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
        if match is None:
            raise SystemExit(f"no callgrind summary for {name}")
        return int(match.group(1))


def instructions(args: argparse.Namespace) -> str:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install -y valgrind")
    per: dict[str, float] = {}
    for name in [BARE, *args.guard]:
        short = count_instructions(name, args.short, args.fresh_tokens)
        long = count_instructions(name, args.long, args.fresh_tokens)
        per[name] = (long - short) / (args.long - args.short)
        print(f"{name}: {per[name]:,.0f} per connection", file=sys.stderr, flush=True)
    out = [
        f"Command: `{shlex.join(['python', 'benchmarks/handshake_profile.py', *sys.argv[1:]])}`",
        "",
        f"In-process fake server, {args.short} then {args.long} connections of connect → one "
        "64 B echo → close; instructions per connection from the difference (callgrind); "
        + ("a new token per connection." if args.fresh_tokens else "one token, reused."),
        "",
        "| app | instructions/connection | ws_guard adds | over the row above |",
        "|---|---:|---:|---:|",
    ]
    bare = per[BARE]
    previous = bare
    for name, value in per.items():
        adds = "" if name == BARE else f"{value - bare:,.0f}"
        step = "" if name == BARE else f"{value - previous:+,.0f}"
        out.append(f"| {name} | {value:,.0f} | {adds} | {step} |")
        previous = value
    return "\n".join(out)


def profile(args: argparse.Namespace) -> None:
    name = args.guard[0]
    app, query = build(name)
    server = FakeServer(1, 64, yield_each=True)

    async def run(count: int) -> None:
        for _ in range(count):
            await server.run(app, query)

    run_loop(run(WARMUP))
    profiler = cProfile.Profile()
    profiler.enable()
    run_loop(run(args.long))
    profiler.disable()
    pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guard", action="append", choices=sorted(VARIANTS), help="variants")
    parser.add_argument("--instructions", action="store_true", help="callgrind counts by variant")
    parser.add_argument("--cprofile", action="store_true", help="cProfile the first variant")
    parser.add_argument("--sort", default="tottime", help="--cprofile: pstats sort key")
    parser.add_argument("--top", type=int, default=40, help="--cprofile: rows shown")
    parser.add_argument("--short", type=int, default=200, help="connections, run 1")
    parser.add_argument("--long", type=int, default=1200, help="connections, run 2")
    parser.add_argument(
        "--fresh-tokens",
        action="store_true",
        help="--instructions: a new token per connection (default: one, reused)",
    )
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run is not None:
        run_loop(connections(args.run, args.count, args.tokens))
        return
    if not 0 < args.short < args.long:
        parser.error("need 0 < --short < --long")
    args.guard = args.guard or list(DEFAULT_GUARDS)
    if args.cprofile:
        profile(args)
        return
    if not args.instructions:
        parser.error("choose --instructions or --cprofile")
    exit_on_sigterm()  # so that the run under valgrind is stopped
    print(instructions(args))


if __name__ == "__main__":
    main()
