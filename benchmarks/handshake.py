"""Handshake churn: a bare Starlette echo endpoint versus the same behind the guard.

After a 1013 shed, a 1012 drain or a network blip, thousands of clients
reconnect at once and every handshake pays for admission. This benchmark
measures that cost: clients in loops of connect → one echo → close.

Paired, like ``echo.py --paired``: the bare app and one guarded app are
served at the same time, both pinned to one core, by two client processes
at once on the other core, so the neighbours' noise hits both alike and the
ratio of their handshake rates within a round is the ratio of their costs.

    python benchmarks/handshake.py                            # rules, full, full_redis
    python benchmarks/handshake.py --guard full --rounds 3 --duration 3
    python benchmarks/handshake.py --instructions --guard full     # callgrind, per handshake
    python benchmarks/handshake.py --instructions --guard full_cached --fresh-tokens
    python benchmarks/handshake.py --json out.json --plot docs/img/handshake.png
    python benchmarks/handshake.py --from-json out.json --plot docs/img/handshake.png  # re-plot

Per side it reports handshakes/s, p50/p99 handshake latency (TCP connect to
the 101 response, at the client) and the server's CPU µs per handshake
(psutil). Redis variants start a redis-server of their own on a free port
(stopped at the end, on every way out) and report, per handshake cycle,
the Redis round trips (the server's reads, ``INFO stats``
``total_reads_processed``, over the measured window: one read per command
or pipeline a client sent), the commands the server sent (``MONITOR``) and
every command Redis ran (``INFO commandstats``).

``--instructions`` counts, with valgrind's callgrind, the instructions one
handshake costs the server: each app runs twice under callgrind with a short
and a long run of handshakes; the difference of the totals divided by the
difference in handshakes is the cost of one (startup and imports cancel
out). Unlike wall-clock rates, the count does not move with the machine's
other load.

Each client loop of a variant that authenticates reuses one token, as a
client reconnecting after a shed or a blip does; ``--fresh-tokens`` gives
every handshake a token no handshake used before (minted by the client, a
unique ``jti``), the case a verified-token cache cannot help.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _children import exit_on_sigterm, run_stoppable, spawn
from _variants import SRC, VARIANTS, fresh_client_query, variant
from echo import (
    core_busy_seconds,
    cpu_model,
    free_port,
    pin,
    start_server,
    stop_server,
    wait_listening,
)

HERE = Path(__file__).resolve()
BARE = "bare"
DEFAULT_GUARDS = ("rules", "full", "full_redis")
#: Variants that need a redis-server (started here).
REDIS_VARIANTS = frozenset({"full_redis", "rate_user"})
#: Bytes of the one text message each connection echoes.
PAYLOAD = b"x" * 64
#: Seconds one connect → echo → close may take before the client gives up.
CYCLE_TIMEOUT = 10.0
#: EventLoopLag's limit under valgrind (see _variants.lag_limit).
VALGRIND_LAG_LIMIT = "10"  # the most EventLoopLag takes


# ---------------------------------------------------------------------------
# Client (subprocess): --loops concurrent loops of connect → echo → close
# ---------------------------------------------------------------------------
class Churn:
    """The client's loops and what they measured."""

    def __init__(self, url: str, app: str, loops: int, fresh: bool = False) -> None:
        query = variant(app).client_query if app != BARE else None
        # One URL (token) per loop, made before the run: the client's own
        # JWT encoding would otherwise be part of every cycle.
        self.urls = [url + (f"?{query(i)}" if query else "") for i in range(loops)]
        self.base = url
        #: --fresh-tokens: a new token for every cycle (minted by the client).
        self.fresh = fresh and query is not None
        self.serial = 0
        self.measuring = False
        self.running = True
        self.latencies: list[int] = []
        self.done = 0
        self.errors = 0
        self.cycles = 0  # every completed cycle, measured or not

    async def cycle(self, url: str) -> None:
        """One connection: handshake, one echo, a 1000 close; raises on anything else."""
        from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

        loop = asyncio.get_running_loop()
        echoed: asyncio.Future[bytes] = loop.create_future()
        closed: asyncio.Future[int | None] = loop.create_future()

        class Listener(WSListener):
            def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
                if frame.msg_type == WSMsgType.TEXT and not echoed.done():
                    echoed.set_result(frame.get_payload_as_bytes())
                elif frame.msg_type == WSMsgType.CLOSE:
                    if not closed.done():
                        closed.set_result(frame.get_close_code())
                    transport.disconnect()

            def on_ws_disconnected(self, transport: WSTransport) -> None:
                for future in (echoed, closed):
                    if not future.done():
                        future.set_exception(ConnectionError("disconnected"))

        started = time.perf_counter_ns()
        transport, _ = await ws_connect(Listener, url, enable_auto_ping=False)
        opened = time.perf_counter_ns()
        try:
            transport.send(WSMsgType.TEXT, PAYLOAD)
            if await echoed != PAYLOAD:
                raise ValueError("wrong echo")
            transport.send_close(WSCloseCode.OK)
            code = await closed
            if code != WSCloseCode.OK:
                raise ValueError(f"closed with {code}")
            await transport.wait_disconnected()
        finally:
            transport.disconnect()
        self.cycles += 1
        if self.measuring:
            self.latencies.append(opened - started)
            self.done += 1

    def url(self, index: int) -> str:
        """Client loop *index*'s URL for its next cycle."""
        if not self.fresh:
            return self.urls[index]
        self.serial += 1
        return f"{self.base}?{fresh_client_query(index, self.serial)}"

    async def loop(self, index: int, limit: int | None) -> None:
        runs = 0
        while self.running and (limit is None or runs < limit):
            runs += 1
            try:
                await asyncio.wait_for(self.cycle(self.url(index)), CYCLE_TIMEOUT)
            except (OSError, ValueError, TimeoutError, ConnectionError):
                self.errors += 1

    async def count(self, each: int) -> dict[str, Any]:
        """*each* cycles per loop, then stop (the callgrind mode's load)."""
        self.measuring = True
        await asyncio.gather(*(self.loop(i, each) for i in range(len(self.urls))))
        return {"done": self.done, "errors": self.errors}


def redis_calls(url: str | None) -> dict[str, int]:
    """Calls per Redis command so far (``INFO commandstats``); empty without Redis."""
    if url is None:
        return {}
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def redis_reads(url: str | None) -> int:
    """Reads the Redis server made from its clients so far (``INFO stats``).

    One read takes in what a client sent at once: a command, or a whole
    pipeline, so the reads a guarded server causes are its round trips.
    """
    if url is None:
        return 0
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_reads_processed"])
    finally:
        client.close()


async def redis_trips(url: str, churn: Churn, seconds: float) -> dict[str, float]:
    """Commands the server sent to Redis per handshake, from ``MONITOR`` over *seconds*.

    Each entry is one command a client sent (a script's own calls, tagged
    ``lua`` by MONITOR, are left out), so without pipelining it is one round
    trip; the monitoring connection's own commands are left out too.
    """
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    counts: dict[str, int] = {}
    try:
        async with client.monitor() as monitor:
            before = churn.cycles
            deadline = time.monotonic() + seconds

            async def read() -> None:
                async for entry in monitor.listen():
                    if entry.get("client_type") == "lua":
                        continue
                    name = str(entry["command"]).split(" ", 1)[0].strip('"').lower()
                    counts[name] = counts.get(name, 0) + 1

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(read(), max(0.0, deadline - time.monotonic()))
            cycles = max(1, churn.cycles - before)
    finally:
        await client.aclose()
    return {name: n / cycles for name, n in sorted(counts.items())}


async def _timed(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    churn = Churn(args.client, args.app, args.loops, args.fresh_tokens)
    server = psutil.Process(args.server_pid)
    tasks = [asyncio.create_task(churn.loop(i, None)) for i in range(len(churn.urls))]
    await asyncio.sleep(args.warmup)
    calls_before = redis_calls(args.redis_url)
    # Two readings back to back: the second's count less the first's is what
    # one reading itself costs the server, taken off the window's count.
    reads_probe = redis_reads(args.redis_url)
    reads_before = redis_reads(args.redis_url)
    reading_cost = reads_before - reads_probe
    cpu_before = server.cpu_times()
    cores_before = core_busy_seconds()
    started = time.perf_counter_ns()
    churn.measuring = True
    errors_before = churn.errors
    await asyncio.sleep(args.duration)
    churn.measuring = False
    window = (time.perf_counter_ns() - started) / 1e9
    cpu_after = server.cpu_times()
    cores_after = core_busy_seconds()
    reads_after = redis_reads(args.redis_url)
    calls_after = redis_calls(args.redis_url)
    commands = await redis_trips(args.redis_url, churn, 1.0) if args.redis_url else {}
    churn.running = False
    await asyncio.wait(tasks, timeout=CYCLE_TIMEOUT + 5)
    server_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    done = max(1, churn.done)
    latencies = sorted(churn.latencies) or [0]
    calls = {
        name: calls_after[name] - calls_before.get(name, 0)
        for name in calls_after
        if calls_after[name] != calls_before.get(name, 0) and name != "info"
    }
    core = args.server_cpu
    return {
        "handshakes": churn.done,
        "rate": churn.done / window,
        "p50_us": latencies[len(latencies) // 2] / 1000,
        "p99_us": latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] / 1000,
        "server_us_per_handshake": server_cpu / done * 1e6,
        "server_cpu": server_cpu / window,
        "server_core_busy": (
            (cores_after[core] - cores_before[core]) / window if core is not None else None
        ),
        "errors": churn.errors - errors_before,
        "redis_calls_per_handshake": {name: n / done for name, n in sorted(calls.items())},
        "redis_commands_per_handshake": commands,
        "redis_trips_per_handshake": (
            (reads_after - reads_before - reading_cost) / done if args.redis_url else None
        ),
    }


def run_client(args: argparse.Namespace) -> None:
    import uvloop

    pin(args.cpu)
    print(json.dumps(run_stoppable(_timed(args), uvloop.run)), flush=True)


# ---------------------------------------------------------------------------
# Orchestration: paired rounds
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def redis_if_needed(names: list[str]) -> Iterator[str | None]:
    """A redis-server of our own when a variant needs one; stopped on every way out."""
    if not REDIS_VARIANTS & set(names):
        yield None
        return
    from soak import start_redis, stop_process

    with tempfile.TemporaryDirectory() as workdir:
        proc, url = start_redis(workdir)
        try:
            os.environ["WS_GUARD_BENCH_REDIS"] = url  # the servers inherit it
            yield url
        finally:
            stop_process(proc, signal.SIGTERM)


def client_round(
    name: str, url: str, pid: int, redis_url: str | None, args: argparse.Namespace
) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--client", url, "--app", name, "--server-pid", str(pid)]
    for flag in ("loops", "duration", "warmup"):
        cmd += [f"--{flag}", str(getattr(args, flag))]
    if args.client_cpu is not None:
        cmd += ["--cpu", str(args.client_cpu), "--server-cpu", str(args.server_cpu)]
    if redis_url is not None and name in REDIS_VARIANTS:
        cmd += ["--redis-url", redis_url]
    if args.fresh_tokens:
        cmd.append("--fresh-tokens")
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    )
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env,
        timeout=args.warmup + args.duration + CYCLE_TIMEOUT + 60,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"client for {name} failed (exit {done.returncode}):\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    """Every round: bare and each guarded app side by side; returns all results."""
    rounds: list[dict[str, dict[str, Any]]] = []
    servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
    summaries: dict[str, Any] = {}
    with redis_if_needed(args.guard) as redis_url:
        try:
            for name in [BARE, *args.guard]:
                servers[name] = start_server(name, args)
            with ThreadPoolExecutor(max_workers=2) as pool:
                for number in range(args.rounds):
                    results: dict[str, dict[str, Any]] = {}
                    for name in args.guard:
                        futures = {
                            key: pool.submit(
                                client_round,
                                key,
                                servers[key][1],
                                servers[key][0].pid,
                                redis_url,
                                args,
                            )
                            for key in (BARE, name)
                        }
                        pair = {key: future.result() for key, future in futures.items()}
                        results[name] = pair[name]
                        results[f"{BARE}:{name}"] = pair[BARE]
                        print(
                            f"round {number + 1} {name}: {pair[name]['rate']:,.0f} handshakes/s "
                            f"beside bare {pair[BARE]['rate']:,.0f} "
                            f"(ratio {pair[name]['rate'] / pair[BARE]['rate']:.3f})",
                            file=sys.stderr,
                            flush=True,
                        )
                    rounds.append(results)
        finally:
            for name, (proc, _) in servers.items():
                if proc.poll() is None:
                    summaries[name] = stop_server(proc)
    return {"rounds": rounds, "summaries": summaries}


def summarise(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per variant: medians over rounds, and the ratio's median, min and max."""
    rounds = data["rounds"]
    table: dict[str, dict[str, Any]] = {}
    for name in args.guard:
        ratios = sorted(r[name]["rate"] / r[f"{BARE}:{name}"]["rate"] for r in rounds)

        def med(key: str, side: str) -> float:
            return float(statistics.median(r[side][key] for r in rounds))

        bare = f"{BARE}:{name}"
        calls: dict[str, float] = {}
        commands: dict[str, float] = {}
        for r in rounds:
            for command, per in r[name]["redis_calls_per_handshake"].items():
                calls[command] = calls.get(command, 0.0) + per / len(rounds)
            for command, per in r[name].get("redis_commands_per_handshake", {}).items():
                commands[command] = commands.get(command, 0.0) + per / len(rounds)
        trips = [r[name].get("redis_trips_per_handshake") for r in rounds]
        table[name] = {
            "ratio": statistics.median(ratios),
            "ratio_min": ratios[0],
            "ratio_max": ratios[-1],
            "rate": med("rate", name),
            "bare_rate": med("rate", bare),
            "p50_us": med("p50_us", name),
            "p99_us": med("p99_us", name),
            "bare_p50_us": med("p50_us", bare),
            "bare_p99_us": med("p99_us", bare),
            "cpu_us": med("server_us_per_handshake", name),
            "bare_cpu_us": med("server_us_per_handshake", bare),
            "errors": sum(r[k]["errors"] for r in rounds for k in (name, bare)),
            "redis_calls_per_handshake": calls,
            "redis_commands_per_handshake": commands,
            "redis_trips_per_handshake": (
                None
                if any(t is None or isinstance(t, dict) for t in trips)
                else statistics.median(trips)
            ),
        }
    return table


#: The options a report states, saved with --json so that --from-json states them too.
SETTINGS = ("rounds", "duration", "warmup", "loops", "server_cpu", "client_cpu", "fresh_tokens")


def command_line() -> str:
    return shlex.join(["python", "benchmarks/handshake.py", *sys.argv[1:]])


def report(args: argparse.Namespace, table: dict[str, dict[str, Any]], command: str) -> str:
    import starlette
    import uvicorn

    pinning = (
        "no CPU pinning"
        if args.server_cpu is None
        else f"both servers on CPU {args.server_cpu}, both clients on CPU {args.client_cpu}"
    )
    out = [
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPUs, {cpu_model()}; uvicorn {uvicorn.__version__} "
        f"(uvloop, httptools), starlette {starlette.__version__}; {pinning}. "
        f"{args.loops} client loops per side of connect → one 64 B echo → close (picows); "
        f"{args.rounds} rounds of {args.duration:g} s after {args.warmup:g} s warm-up; "
        "medians over rounds.",
        "",
        "| guard | guarded/bare (median) | min | max | handshakes/s guarded / bare "
        "| p50 µs guarded / bare | p99 µs guarded / bare | server CPU µs/handshake "
        "guarded / bare | Redis round trips/handshake |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in table.items():
        trips = row["redis_trips_per_handshake"]
        redis = "" if trips is None else f"{trips:.2f}"
        out.append(
            f"| {name} | **{row['ratio']:.3f}** | {row['ratio_min']:.3f} | {row['ratio_max']:.3f} "
            f"| {row['rate']:,.0f} / {row['bare_rate']:,.0f} "
            f"| {row['p50_us']:.0f} / {row['bare_p50_us']:.0f} "
            f"| {row['p99_us']:.0f} / {row['bare_p99_us']:.0f} "
            f"| {row['cpu_us']:.0f} / {row['bare_cpu_us']:.0f} | {redis} |"
        )
    out.append("")
    out += [f"- `{name}`: {VARIANTS[name].description}" for name in table]
    for name, row in table.items():
        if row["redis_calls_per_handshake"]:
            out.append(
                f"- `{name}`: Redis round trips per cycle (the handshake's checks and the "
                "release at its end), from the server's reads (INFO stats "
                "total_reads_processed: one read per command or pipeline a client sent); "
                "commands the server sent, from MONITOR: "
                + per_command(row.get("redis_commands_per_handshake", {}))
                + "; every command Redis ran, scripts' own calls included "
                "(INFO commandstats): " + per_command(row["redis_calls_per_handshake"])
            )
    errors = sum(row["errors"] for row in table.values())
    if errors:
        out.append(f"- WARNING: {errors} cycles failed (refused, wrong echo or close code)")
    return "\n".join(out)


def per_command(counts: dict[str, float]) -> str:
    """``total (command n, ...)`` per handshake; ``-`` for none."""
    shown = {c: n for c, n in counts.items() if round(n, 2)}
    if not shown:
        return "-"
    return (
        f"{sum(shown.values()):.2f} (" + ", ".join(f"{c} {n:.2f}" for c, n in shown.items()) + ")"
    )


def plot(path: str, table: dict[str, dict[str, Any]]) -> None:
    """Bars of handshakes/s, guarded beside bare, per variant (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    xs = range(len(names))
    width = 0.38
    ax.bar([x - width / 2 for x in xs], [table[n]["bare_rate"] for n in names], width,
           label="bare (same round)", color="#9aa5b1")  # fmt: skip
    bars = ax.bar([x + width / 2 for x in xs], [table[n]["rate"] for n in names], width,
                  label="guarded", color="#2f6fb0")  # fmt: skip
    for bar, name in zip(bars, names, strict=True):
        ax.annotate(
            f"{table[name]['ratio']:.2f}x",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("handshakes/s (one core)")
    ax.set_title("Handshake churn: connect → one echo → close, paired on one core")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------
# --instructions: callgrind counts per handshake
# ---------------------------------------------------------------------------
def count_instructions(name: str, loops: int, each: int, fresh: bool) -> tuple[int, int]:
    """Server instructions for *loops* times *each* handshakes, and the handshakes done."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
            WS_GUARD_BENCH_LAG_LIMIT=VALGRIND_LAG_LIMIT,
        )
        proc = spawn(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--quiet",
                sys.executable,
                str(HERE.parent / "echo.py"),
                "--serve",
                name,
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_listening(port, proc, timeout=300)
            churn = Churn(f"ws://127.0.0.1:{port}/ws", name, loops, fresh)
            result = run_stoppable(churn.count(each))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=300)
        if result["errors"]:
            raise SystemExit(f"{name}: {result['errors']} handshake cycles failed under callgrind")
        match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
        if match is None:
            raise SystemExit(f"no callgrind summary for {name}")
        return int(match.group(1)), int(result["done"])


def instructions(args: argparse.Namespace) -> dict[str, float]:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install -y valgrind")
    per: dict[str, float] = {}
    with redis_if_needed(args.guard):
        for name in [BARE, *args.guard]:
            short, short_done = count_instructions(name, args.loops, args.short, args.fresh_tokens)
            long, long_done = count_instructions(name, args.loops, args.long, args.fresh_tokens)
            per[name] = (long - short) / (long_done - short_done)
            print(
                f"{name}: {short:,} / {long:,} instructions -> {per[name]:,.0f} per handshake",
                file=sys.stderr,
                flush=True,
            )
    return per


def report_instructions(args: argparse.Namespace, per: dict[str, float]) -> str:
    out = [
        f"Command: `{command_line()}`",
        "",
        f"{args.loops} client loops, {args.short} then {args.long} cycles each of connect → "
        "one 64 B echo → close; server instructions per cycle from the difference "
        "(valgrind callgrind); "
        + (
            "a new token for every handshake."
            if args.fresh_tokens
            else "one token per client loop, reused by its handshakes."
        ),
        "",
        "| app | instructions/handshake | guard adds | bare/guarded |",
        "|---|---:|---:|---:|",
    ]
    bare = per[BARE]
    for name, value in per.items():
        adds = "" if name == BARE else f"{value - bare:,.0f}"
        ratio = "1" if name == BARE else f"{bare / value:.3f}"
        out.append(f"| {name} | {value:,.0f} | {adds} | {ratio} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--guard",
        action="append",
        choices=sorted(VARIANTS),
        help=f"guard variant beside the bare app; repeat (default: {', '.join(DEFAULT_GUARDS)})",
    )
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--loops", type=int, default=20, help="concurrent client loops per side")
    parser.add_argument("--server-cpu", type=int, default=0, help="core for both servers")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for both clients")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPU cores")
    parser.add_argument(
        "--fresh-tokens",
        action="store_true",
        help="a new token for every handshake (default: one per client loop, reused)",
    )
    parser.add_argument("--json", help="write the per-round results and summary here")
    parser.add_argument("--plot", help="write a bar chart (PNG) of handshakes/s here")
    parser.add_argument(
        "--from-json", help="no run: report (and --plot) the summary a --json run wrote"
    )
    parser.add_argument(
        "--instructions", action="store_true", help="count callgrind instructions per handshake"
    )
    parser.add_argument(
        "--short", type=int, default=20, help="--instructions: cycles per loop, run 1"
    )
    parser.add_argument(
        "--long", type=int, default=80, help="--instructions: cycles per loop, run 2"
    )
    # Internal: the same script is the client subprocess.
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--app", default=BARE, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.guard = args.guard or list(DEFAULT_GUARDS)
    if args.no_pin:
        args.server_cpu = args.client_cpu = None
    elif args.client is None:
        available = os.sched_getaffinity(0)
        for cpu in (args.server_cpu, args.client_cpu):
            if cpu not in available:
                parser.error(f"CPU {cpu} is not available (have {sorted(available)}); try --no-pin")
        if args.server_cpu == args.client_cpu:
            parser.error("--server-cpu and --client-cpu must differ")
    for flag in ("rounds", "loops", "short", "long"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if args.short >= args.long:
        parser.error("need --short < --long")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.client is not None:
        run_client(args)
        return
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        table = saved["summary"]
        vars(args).update(saved["settings"])
        print(report(args, table, saved["command"]))
        if args.plot:
            plot(args.plot, table)
        return
    exit_on_sigterm()  # so that the servers and redis-server are stopped
    if args.instructions:
        per = instructions(args)
        print(report_instructions(args, per))
        if args.json:
            Path(args.json).write_text(json.dumps({"instructions": per}, indent=1) + "\n")
        return
    data = orchestrate(args)
    table = summarise(args, data)
    print(report(args, table, command_line()))
    if args.json:
        settings = {name: getattr(args, name) for name in SETTINGS}
        saved = {"command": command_line(), "settings": settings, **data, "summary": table}
        Path(args.json).write_text(json.dumps(saved, indent=1) + "\n")
    if args.plot:
        plot(args.plot, table)


if __name__ == "__main__":
    main()
