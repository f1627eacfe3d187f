"""The soak benchmark's Markdown report and plot, from the run's JSON data."""

from __future__ import annotations

import collections
import itertools
import re
import statistics
from typing import Any

#: Reason slugs ws_guard itself sends (anything else came from the app or the client).
GUARD_SLUGS = (
    "rate_limited", "connect_rate_limited", "too_many_connections", "token_missing",
    "token_invalid", "token_expired", "message_too_big", "unsupported_data", "content:",
    "overloaded", "restarting", "internal_error", "storage_unavailable",
)  # fmt: skip
#: Longest window (s) before warm-up end and churn end whose median RSS is taken.
RSS_WINDOW = 10.0
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Crash|Exit|Interrupt)\b")


def summarize_log(text: str) -> dict[str, Any]:
    """Counts of what the server wrote to stderr: ASGI exceptions, their types, warnings."""
    lines = text.splitlines()
    exceptions = collections.Counter(line[:160] for line in lines if _EXCEPTION_LINE.match(line))
    notices = collections.Counter(
        re.sub(r"\d+", "N", line[:160])
        for line in lines
        if line.startswith(("ERROR", "WARNING", "CRITICAL", "ws_guard"))
    )
    return {
        "lines": len(lines),
        "exceptions": dict(exceptions.most_common(20)),
        "notices": dict(notices.most_common(20)),
        "tail": lines[-20:],
    }


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------
def _mib(kib: float | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f}"


def _rss_window(samples: list[dict[str, Any]], start: float, end: float) -> float | None:
    values = [s["rss_kib"] for s in samples if start <= s["t"] <= end and s.get("rss_kib")]
    if not values:  # a very short run: the nearest sample
        candidates = [s for s in samples if s.get("rss_kib")]
        if not candidates:
            return None
        return float(min(candidates, key=lambda s: abs(s["t"] - end))["rss_kib"])
    return float(statistics.median(values))


def rss_summary(data: dict[str, Any]) -> dict[str, Any]:
    settings = data["settings"]
    samples = [s for s in data["samples"] if s["phase"] == "churn"]
    warmup, churn_end = settings["warmup"], data["churn_seconds"]
    window = min(RSS_WINDOW, warmup / 4, (churn_end - warmup) / 4)
    warm = _rss_window(samples, warmup - window, warmup)
    end = _rss_window(samples, churn_end - window, churn_end)
    after = [(s["t"], s["rss_kib"]) for s in samples if s["t"] >= warmup and s.get("rss_kib")]
    slope = None
    if len(after) >= 3:
        ts, vs = zip(*after, strict=True)
        fit = statistics.linear_regression(ts, vs)
        slope = fit.slope * 60 / 1024  # MiB per minute
    growth = None if not warm or end is None else (end - warm) / warm * 100
    all_rss = [s["rss_kib"] for s in data["samples"] if s.get("rss_kib")]
    return {
        "window": window,
        "start": data["milestones"]["start"]["rss_kib"],
        "warm": warm,
        "end": end,
        "final": data["milestones"]["final"]["rss_kib"],
        "peak": max(all_rss) if all_rss else None,
        "growth": growth,
        "slope": slope,
    }


def classify_1006(entry: dict[str, Any]) -> tuple[str, bool]:
    """What the server side did on a connection the client saw end in 1006.

    The second value is True when the server side is to blame: the guarded
    stack ended an open connection without sending a close, or an unexpected
    exception escaped it.
    """
    record = entry.get("server")
    if entry.get("lookup_error"):
        return f"lookup failed ({entry['lookup_error']})", False
    if record is None:
        return "unknown to the server (never reached the app, or forgotten)", False
    exception = record.get("exception")
    if exception and exception not in ("SoakCrash", "CancelledError"):
        return f"exception {exception} escaped the guarded app", True
    close = record.get("close")
    if close is not None:
        code, reason = close
        slug = reason.partition(";")[0]
        who = "ws_guard" if slug.startswith(GUARD_SLUGS) else "the app"
        failed = f", send failed: {record['send_error']}" if record.get("send_error") else ""
        return f"server sent close {code} {slug} ({who}); client got no close frame{failed}", False
    if record.get("disconnect") is not None:
        return f"client left first (server got disconnect {record['disconnect']})", False
    if not record.get("ended"):
        return "still running on the server at lookup", False
    if not record.get("accepted"):
        return "ended before accept without a close", True
    return "ended while open without a close or a disconnect", True


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _yes(ok: bool) -> str:
    return "**yes**" if ok else "**NO**"


def report(data: dict[str, Any]) -> str:
    s = data["settings"]
    client = data["client"]
    ms = data["milestones"]
    final_status = ms["final"]["status"]
    server = data.get("server", {})
    tracker = server.get("tracker", {})
    rss = rss_summary(data)
    abnormal = client["abnormal"]
    attributed = [classify_1006(e) for e in abnormal]
    guard_1006 = sum(1 for _, fault in attributed if fault)
    client_1006 = client["codes"].get("1006", 0)
    keys_left = ms["final"]["keys"]["total"]
    violations = tracker.get("send_after_close", 0)
    out: list[str] = ["# Soak report", ""]
    if s["duration"] < 600:
        out += [
            f"> **Short verification run** ({s['duration']:g} s, {s['concurrency']} client "
            "tasks): not the 10-minute soak. Numbers show the method works, not the targets.",
            "",
        ]
    if data.get("note"):
        out += [f"> {data['note']}", ""]
    out += [
        f"Command: `{data['command']}`",
        "",
        f"- Guard: {data['guard']}",
        f"- Server: one uvicorn worker, uvloop, httptools, WebSocket protocol "
        f"`{server.get('ws_protocol')}`; Python {data['machine']['python']}, "
        f"{data['machine']['cpus']} CPUs",
        f"- Clients: {s['concurrency']} tasks (websockets client, own 127.0.x.y address each), "
        f"seed {s['seed']}, think time 0.05-{s['think']:g} s, ramp {s['ramp']:g} s, "
        f"1013 back-off capped at {s['max_backoff']:g} s",
        f"- Churn {data['churn_seconds']:g} s (duration {s['duration']:g} s + finishing episodes), "
        f"warm-up {s['warmup']:g} s",
        "",
        "## Targets",
        "",
    ]
    growth = rss["growth"]
    growth_text = (
        "n/a"
        if growth is None
        else f"{growth:+.1f} % ({_mib(rss['warm'])} -> {_mib(rss['end'])} MiB)"
    )
    out += _table(
        ["measure", "result", "target", "met"],
        [
            [
                "RSS growth after warm-up",
                growth_text,
                "< 5 %",
                _yes(growth is not None and growth < 5),
            ],
            [
                "Redis keys left after the churn",
                f"{keys_left} (start {ms['start']['keys']['total']}, "
                f"churn end {ms['churn_end']['keys']['total']})",
                "0",
                _yes(keys_left == 0),
            ],
            [
                "1006 closes caused by ws_guard",
                f"{guard_1006} (clients saw {client_1006} 1006s; {len(abnormal)} looked up)",
                "0",
                _yes(guard_1006 == 0 and client["abnormal_unlooked"] == 0),
            ],
            [
                "storage errors (Redis stays healthy)",
                str(final_status["storage_errors"]),
                "0",
                _yes(final_status["storage_errors"] == 0),
            ],
            [
                "ASGI sends after a close (server side)",
                str(violations),
                "0",
                _yes(violations == 0),
            ],
            [
                "active connections after the churn",
                f"{data['active_at_drain_end']} (after {data['drained_after']:g} s)",
                "0",
                _yes(data["active_at_drain_end"] == 0),
            ],
        ],
    )
    failed = sum(client["failures"].values())
    out += [
        "",
        "## Connections",
        "",
        f"- Client connection attempts: **{client['attempts']}**, opened (handshake done) "
        f"{client['opened']}, failed handshakes {failed}; "
        f"{client['attempts'] / max(1.0, data['churn_seconds']):.0f} attempts/s",
        f"- Server: handshakes admitted {final_status['handshakes_admitted']}, rejected "
        f"{final_status['handshakes_rejected']}, peak active {final_status['peak_connections']}, "
        f"tracked connections {tracker.get('connections', 'n/a')}",
        f"- Server: storage errors {final_status['storage_errors']}; sheds by gauge: "
        + ", ".join(f"{g['name']} {g['sheds']}" for g in final_status["gauges"]),
        f"- Episodes: {sum(client['episodes'].values())}; client tasks cancelled at the end: "
        f"{data['cancelled_tasks']}; echo mismatches: {client['echo_mismatches']}; "
        f"1013 back-offs {client['backoffs']} ({client['backoff_seconds']:g} s in total)",
        f"- After the churn: {data['active_at_drain_end']} active connections "
        f"{data['drained_after']:g} s later; Redis held {ms['final']['keys']['total']} keys "
        f"{data['keys_waited']:g} s after that",
        "",
    ]
    if client.get("client_errors"):
        out += [
            "Client-side errors: "
            + ", ".join(f"{k} x{v}" for k, v in client["client_errors"].items()),
            "",
        ]
    if client["failures"]:
        out += [
            "Failed handshakes: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(client["failures"].items())),
            "",
        ]

    # -- close codes ---------------------------------------------------------------
    by_code: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    guard_rules: collections.Counter[tuple[int, str]] = collections.Counter()
    for item in final_status["closes"]:
        by_code[item["code"]][item["initiator"]] += item["count"]
        if item["initiator"] == "guard":
            guard_rules[(item["code"], item["rule"])] += item["count"]
    codes = sorted({int(c) for c in client["codes"]} | set(by_code))
    out += [
        "## Close codes",
        "",
        "Client side: the code in the close frame each client received (1006: none arrived). "
        "Server side: ws_guard's counters, by who closed.",
        "",
    ]
    out += _table(
        ["code", "clients saw", "server counted", "by guard", "by app", "by client"],
        [
            [
                code,
                client["codes"].get(str(code), 0),
                sum(by_code[code].values()),
                by_code[code]["guard"],
                by_code[code]["app"],
                by_code[code]["client"],
            ]
            for code in codes
        ],
    )
    out += ["", "Guard closes by rule (server):", ""]
    out += _table(
        ["code", "rule", "count"], [[c, r, n] for (c, r), n in sorted(guard_rules.items())]
    )

    # -- behaviours ------------------------------------------------------------------
    out += [
        "",
        "## Behaviours",
        "",
        "Outcome labels are `<code> <reason slug>` as the client saw them.",
        "",
    ]
    rows = []
    for name, outcomes in client["outcomes"].items():
        text = ", ".join(
            f"{label} x{n}" for label, n in sorted(outcomes.items(), key=lambda x: -x[1])
        )
        rows.append([name, client["episodes"].get(name, 0), sum(outcomes.values()), text])
    out += _table(["behaviour", "episodes", "connections", "outcomes"], rows)
    out += [""]
    if client["unexpected"]:
        out += ["Unexpected outcomes (not what the behaviour provokes, and not a 1013 shed):", ""]
        out += [f"- {k}: {v}" for k, v in sorted(client["unexpected"].items(), key=lambda x: -x[1])]
    else:
        out += ["Unexpected outcomes: none."]
    if client["misses"]:
        out += ["", "Episodes that missed their point:", ""]
        out += [f"- {k}: {v}" for k, v in sorted(client["misses"].items())]
    out += [""]

    # -- memory --------------------------------------------------------------------------
    out += ["## Memory (server RSS)", ""]
    out += _table(
        ["point", "RSS MiB"],
        [
            ["start (idle)", _mib(rss["start"])],
            [f"warm-up end (median of the last {rss['window']:g} s)", _mib(rss["warm"])],
            [f"churn end (median of the last {rss['window']:g} s)", _mib(rss["end"])],
            ["peak", _mib(rss["peak"])],
            ["after drain (idle)", _mib(rss["final"])],
        ],
    )
    slope = rss["slope"]
    out += [
        "",
        f"Trend after warm-up (least squares): "
        f"{'n/a' if slope is None else f'{slope:+.3f} MiB/min'}.",
        "",
        "Guard internals (server, `/debug.json`):",
        "",
    ]
    points = ["start", "warmup_end", "churn_end", "final"]
    names = [k for k, v in ms["final"]["internals"].items() if isinstance(v, (int, float))]
    out += _table(
        ["structure", *points],
        [[k, *(ms[p]["internals"].get(k, "") for p in points)] for k in names],
    )
    types = {p: ms[p]["internals"].get("types", {}) for p in points}
    grown = sorted(
        types["churn_end"],
        key=lambda t: types["warmup_end"].get(t, 0) - types["churn_end"][t],
    )[:10]
    out += [
        "",
        "Live objects by type (types with at least 20), largest growth from warm-up end to "
        "churn end (both under load; a leak grows with the connections served):",
        "",
    ]
    out += _table(
        ["type", *points, "churn end - warm-up end"],
        [
            [
                t,
                *(types[p].get(t, "") for p in points),
                f"{types['churn_end'][t] - types['warmup_end'].get(t, 0):+d}",
            ]
            for t in grown
        ],
    )

    # -- keys ------------------------------------------------------------------------------
    out += [
        "",
        "## Redis keys",
        "",
        "By ws_guard kind (`ws_guard:<kind>:...`); total is DBSIZE.",
        "",
    ]
    kinds = sorted({k for p in points for k in ms[p]["keys"]} - {"total"})
    out += _table(
        ["point", "total", *kinds],
        [[p, ms[p]["keys"]["total"], *(ms[p]["keys"].get(k, 0) for k in kinds)] for p in points],
    )

    # -- 1006 -------------------------------------------------------------------------------
    out += ["", "## 1006 attribution", ""]
    if not abnormal:
        out += ["No client saw a 1006."]
    else:
        counts = collections.Counter(
            (e["behaviour"], e["phase"], e.get("error"), cat)
            for e, (cat, _) in zip(abnormal, attributed, strict=True)
        )
        out += _table(
            ["behaviour", "client phase", "client error", "server side", "count"],
            [[b, p, err or "", cat, n] for (b, p, err, cat), n in counts.most_common()],
        )
        if client["abnormal_unlooked"]:
            out += ["", f"{client['abnormal_unlooked']} more 1006s were not looked up."]

    # -- server log --------------------------------------------------------------------------
    log = data.get("server_log", {})
    out += ["", "## Server log", "", f"{log.get('lines', 0)} lines on stderr. Server-side "
            f"tracker counters: {tracker or 'n/a'}", ""]  # fmt: skip
    if log.get("exceptions"):
        out += ["Exception lines:", ""]
        out += [f"- `{k}` x{v}" for k, v in log["exceptions"].items()]
        out += [""]
    if log.get("notices"):
        out += ["Log records:", ""]
        out += [f"- `{k}` x{v}" for k, v in log["notices"].items()]
        out += [""]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------
def plot(data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = data["samples"]
    s = data["settings"]
    rss = rss_summary(data)
    fig, (mem, conns, keys) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    t = [x["t"] for x in samples if x.get("rss_kib")]
    mem.plot(t, [x["rss_kib"] / 1024 for x in samples if x.get("rss_kib")], color="tab:blue",
             lw=1.2, label="server RSS")  # fmt: skip
    if rss["warm"]:
        mem.axhline(rss["warm"] / 1024, color="gray", ls=":", lw=1,
                    label=f"warm-up RSS {rss['warm'] / 1024:.1f} MiB")  # fmt: skip
        mem.axhline(rss["warm"] * 1.05 / 1024, color="tab:red", ls=":", lw=1, label="+5 %")
    mem.set_ylabel("RSS (MiB)")
    mem.legend(fontsize=8, loc="center right")
    active = [(x["t"], x["active"]) for x in samples if "active" in x]
    if active:
        conns.plot(*zip(*active, strict=True), color="tab:green", lw=1, label="active (server)")
    rate = []
    for before, after in itertools.pairwise(samples):
        if "attempts" in before and "attempts" in after and after["t"] > before["t"]:
            rate.append(
                (after["t"], (after["attempts"] - before["attempts"]) / (after["t"] - before["t"]))
            )
    if rate:
        conns.plot(*zip(*rate, strict=True), color="tab:orange", lw=1, alpha=0.8,
                   label="connection attempts/s (clients)")  # fmt: skip
    conns.set_ylabel("connections")
    conns.legend(fontsize=8, loc="upper right")
    key_points = [(x["t"], x["keys"]) for x in samples if "keys" in x]
    key_points += [(m["t"], m["keys"]["total"]) for m in data["milestones"].values()]
    key_points.sort()
    if key_points:
        keys.plot(*zip(*key_points, strict=True), "-o", ms=2, color="tab:purple", lw=1,
                  label="Redis keys (DBSIZE)")  # fmt: skip
    keys.set_ylabel("Redis keys")
    keys.set_xlabel("seconds since start")
    keys.legend(fontsize=8, loc="upper right")
    for ax in (mem, conns, keys):
        ax.axvline(s["warmup"], color="gray", lw=1, ls="--")
        ax.axvline(data["churn_seconds"], color="gray", lw=1, ls="--")
        ax.grid(True, alpha=0.3)
    for x, text in ((s["warmup"], " warm-up end"), (data["churn_seconds"], " churn end")):
        mem.annotate(text, (x, 0.02), xycoords=("data", "axes fraction"), fontsize=8,
                     color="gray")  # fmt: skip
    short = " (short verification run)" if s["duration"] < 600 else ""
    growth = "n/a" if rss["growth"] is None else f"{rss['growth']:+.1f} %"
    fig.suptitle(
        f"Soak{short}: {data['client']['attempts']} connection attempts in "
        f"{data['churn_seconds']:g} s, "
        f"{s['concurrency']} client tasks; RSS growth after warm-up {growth}; "
        f"Redis keys left {data['milestones']['final']['keys']['total']}"
        + (f"\n{data['note']}" if data.get("note") else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
