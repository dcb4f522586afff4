"""From the measured figures to the tables: side by side, then each target's ratio."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The Copilot CLI runtime behind the Copilot SDK, measured on this kind of
# machine against a local fake model server (issue #7): each of ours should be
# an order of magnitude below.
REFERENCE_MS = {
    "create": 18.0,
    "turn": 20.0,
    "resume": 24.0,
    "list_500": 62.0,
    "cold_start": 300.0,
}


@dataclass(frozen=True)
class Target:
    name: str
    ratio: float
    bound: str
    met: bool


def _ms(value: float) -> str:
    if math.isnan(value):
        return "—"
    return (
        f"{value:.3f} ms" if value < 1 else f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    )


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


def _lat(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "—"
    return f"{_ms(summary['p50_ms'])} (p99 {_ms(summary['p99_ms'])})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def side_by_side(results: dict[str, Any]) -> str:
    """Every figure, copilotd next to the baseline where the baseline has one."""
    rows: list[list[str]] = []
    store = results.get("store")
    if store:
        ours, base = store["copilotd"], store["baseline"]
        sessions = f"{store['sessions']:,} sessions / {store['events']:,} events stored"
        rows.append(["bare ping, sequential", _lat(ours["ping"]), "— (no process hop)"])
        rows.append(["create a session", _lat(ours["create"]), "— (no create call)"])
        for size in store["resume_sizes"]:
            rows.append(
                [
                    f"resume + last 50 events, {int(size):,}-event session",
                    _lat(ours[f"resume_{size}"]),
                    _lat(base[f"resume_{size}"]),
                ]
            )
        for size in store["resume_sizes"]:
            rows.append(
                [
                    f"first turn after resume, {int(size):,}-event session "
                    "(baseline: `get_items()` of it all)",
                    _lat(ours[f"first_turn_{size}"]),
                    _lat(base[f"first_turn_{size}"]),
                ]
            )
        rows.append(
            [
                f"list sessions, first page of 50 ({sessions})",
                _lat(ours["list_first_page"]),
                _lat(base["list_first_page"]),
            ]
        )
        rows.append(
            [
                f"list all {store['sessions']:,} sessions (pages of 1,000; baseline: one query)",
                _ms(ours["list_all"]["p50_ms"]),
                _ms(base["list_all"]["p50_ms"]),
            ]
        )
        delete = store["delete"]
        rows.append(
            [
                f"delete a {int(store['resume_sizes'][-1]):,}-event session",
                _ms(delete["delete_ms"]),
                "—",
            ]
        )
        rows.append(
            [
                f"another session's slowest turn while the deleted events were purged "
                f"({delete['purged_events']:,} events, {delete['purge_steps']} steps, "
                f"{delete['purge_seconds']:.2f} s); its p50 before",
                f"{_ms(delete['other_max_ms'])}; {_ms(delete['other_p50_ms'])}",
                "—",
            ]
        )
        search = store.get("search")
        if search:
            rows.extend(_search_rows(search, sessions))
        compaction = store.get("compaction")
        if compaction:  # runs before 2026-12-01 had none
            rows.extend(_compaction_rows(compaction))
        memory = store["memory"]
        rows.append(
            [
                f"daemon RSS with {sessions}: idle / after the reads / peak",
                f"{memory['idle']['VmRSS']:.0f} / {memory['after_reads']['VmRSS']:.0f} / "
                f"{memory['end']['VmHWM']:.0f} MB",
                "—",
            ]
        )
    for run in results.get("turns", []):
        n = run["clients"]
        layout = f"{n} client{'s' if n > 1 else ''} in {run['processes']} process"
        layout += "es" if run["processes"] > 1 else ""
        rows.append(
            [f"turns/s, {layout}", _throughput(run["copilotd"]), _throughput(run["baseline"])]
        )
        rows.append([f"bare pings/s, {layout}", _rate(run["pings"]["per_second"]), "—"])
        rows.append(
            [
                f"CPU per turn, daemon + clients, {layout} (per bare ping)",
                f"{_cpu(run['copilotd'])} ({_cpu(run['pings'])})",
                _cpu(run["baseline"]),
            ]
        )
        rows.append(
            [f"writes per durable transaction, {layout}", _batching(run["group_commit"]), "—"]
        )
    durable = results.get("durable")
    if durable:
        p = durable["processes"]
        rows.append(
            [
                f"durable turns, {p} processes",
                _throughput(durable["copilotd"]),
                _throughput(durable["baseline"]),
            ]
        )
        if "pings" in durable:  # runs before 2026-11-25 had none
            rows.append(
                [
                    f"bare pings/s, {p} processes (CPU per ping, daemon + clients)",
                    f"{_rate(durable['pings']['per_second'])} ({_cpu(durable['pings'])})",
                    "—",
                ]
            )
        rows.append(
            [
                f"share of turns per process, {p} processes",
                _shares(durable["copilotd"]),
                _shares(durable["baseline"]),
            ]
        )
        rows.append(
            [
                f"CPU per durable turn, daemon + clients, {p} processes",
                _cpu(durable["copilotd"]),
                _cpu(durable["baseline"]),
            ]
        )
        rows.append(
            [
                f"writes per durable transaction, {p} processes",
                _batching(durable["group_commit"]),
                "—",
            ]
        )
    cold = results.get("cold_start")
    if cold:
        rows.append(
            [
                "client process start to first answered call",
                _lat(cold["copilotd"]),
                _lat(cold["baseline"]),
            ]
        )
        if "auto_start" in cold:
            rows.append(
                [
                    "client process start, no daemon running, to first answer (auto-start)",
                    _lat(cold["auto_start"]),
                    "—",
                ]
            )
    return table(["what", "copilotd", "baseline: SQLiteSession"], rows)


def _throughput(run: dict[str, Any]) -> str:
    return f"{_rate(run['per_second'])}; p50 {_ms(run['p50_ms'])}, p99 {_ms(run['p99_ms'])}"


def _cpu(run: dict[str, Any]) -> str:
    client = run.get("client_cpu_ms_per_operation", math.nan)
    if "daemon_cpu_ms_per_operation" not in run:
        return f"{_ms(client)} (all in the client process)"
    return f"{_ms(run['daemon_cpu_ms_per_operation'])} + {_ms(client)}"


def profile_table(results: dict[str, Any]) -> str:
    """Where the daemon's event loop spent its time in the widest turns run (``--profile``)."""
    runs = [run for run in results.get("turns", []) if "profile" in run["copilotd"]]
    if not runs:
        return ""
    profile = runs[-1]["copilotd"]["profile"]
    rows = [
        [f"event loop: {kind}", f"{share:.0%}"] for kind, share in profile["event_loop"].items()
    ]
    rows += [
        [f"  copilotd: {name}", f"{share:.1%}"]
        for name, share in profile["copilotd_functions"].items()
    ]
    rows += [
        [f"thread: {name}", f"{share:.0%} of all samples"]
        for name, share in profile["threads"].items()
    ]
    title = (
        f"daemon under {runs[-1]['clients']} clients' turns (py-spy, {profile['samples']} samples)"
    )
    return table([title, "share"], rows)


def _shares(run: dict[str, Any]) -> str:
    return f"{run['share_min']:.2f}x to {run['share_max']:.2f}x of the mean"


def _batching(stats: dict[str, Any]) -> str:
    if "transactions" not in stats:
        return "—"
    return (
        f"{stats['operations_per_transaction']:.1f} writes per commit "
        f"({stats['operations']:,} in {stats['transactions']:,}; largest {stats['largest_batch']})"
    )


def targets(results: dict[str, Any]) -> list[Target]:
    """Each target of issue #7 with the ratio this run measured."""
    found: list[Target] = []

    def add(name: str, ratio: float, bound: str, check: Callable[[float], bool]) -> None:
        found.append(Target(name, ratio, bound, not math.isnan(ratio) and check(ratio)))

    store = results.get("store")
    if store:
        ours = store["copilotd"]
        small, large = store["resume_sizes"][0], store["resume_sizes"][-1]
        resume_large = ours[f"resume_{large}"]["p50_ms"]
        ping = ours["ping"]["p50_ms"]
        add(
            f"resume of a {int(large):,}-event session / resume of a {int(small):,}-event one",
            resume_large / ours[f"resume_{small}"]["p50_ms"],
            "≤ 1.2x",
            lambda r: r <= 1.2,
        )
        add(
            f"resume of a {int(large):,}-event session / bare ping",
            resume_large / ping,
            "≤ 3x",
            lambda r: r <= 3,
        )
        add(
            f"first page of list_sessions with {store['sessions']:,} sessions / bare ping",
            ours["list_first_page"]["p50_ms"] / ping,
            "≤ 3x",
            lambda r: r <= 3,
        )
        rss = max(store["memory"][k]["VmRSS"] for k in ("idle", "after_reads", "end"))
        add(
            f"daemon RSS with {store['sessions']:,} sessions (MB, highest reading) / 150 MB",
            rss / 150,
            "≤ 1x",
            lambda r: r <= 1,
        )
    durable = results.get("durable")
    if durable:
        ours, base = durable["copilotd"], durable["baseline"]
        p = durable["processes"]
        add(
            f"durable turns/s from {p} processes / baseline's",
            ours["per_second"] / base["per_second"],
            "≥ 1x",
            lambda r: r >= 1,
        )
        add(
            f"p99 durable turn latency, {p} processes / baseline's",
            ours["p99_ms"] / base["p99_ms"],
            "≤ 0.2x",
            lambda r: r <= 0.2,
        )
        add(
            f"smallest share of turns of one of {p} processes",
            ours["share_min"],
            "≥ 0.8x",
            lambda r: r >= 0.8,
        )
        add(
            f"largest share of turns of one of {p} processes",
            ours["share_max"],
            "≤ 1.25x",
            lambda r: r <= 1.25,
        )
    turns = results.get("turns", [])
    if turns:
        widest = max(turns, key=lambda run: run["clients"])
        n = widest["clients"]
        add(
            f"turns/s with {n} clients / bare pings/s with {n} callers",
            widest["copilotd"]["per_second"] / widest["pings"]["per_second"],
            "≥ 0.3x",
            lambda r: r >= 0.3,
        )
    cold = results.get("cold_start")
    if cold:
        add(
            "client cold start to first answer / 0.5 s",
            cold["copilotd"]["p50_ms"] / 500,
            "≤ 1x",
            lambda r: r <= 1,
        )
        if "auto_start" in cold:
            add(
                "auto-start to first answer / 0.25 s",
                cold["auto_start"]["p50_ms"] / 250,
                "≤ 1x",
                lambda r: r <= 1,
            )
    return found


def target_table(found: list[Target]) -> str:
    rows = [[t.name, f"{t.ratio:.2f}x", t.bound, "met" if t.met else "**missed**"] for t in found]
    return table(["target", "measured", "bound", ""], rows)


def _compaction_rows(compaction: dict[str, Any]) -> list[list[str]]:
    events = f"{compaction['session_events']:,}"
    return [
        [
            f"model context of a {events}-event session, loaded (in-process): "
            "without a compaction / after one",
            f"{_lat(compaction['plain_load'])} ({compaction['plain_messages']:,} messages) / "
            f"{_lat(compaction['compacted_load'])} ({compaction['compacted_messages']} messages)",
            "—",
        ],
        [
            "a compaction's own work besides its model calls (range, transcript, chunks "
            "of a full window)",
            _lat(compaction["work"]),
            "—",
        ],
    ]


def _search_rows(search: dict[str, Any], sessions: str) -> list[list[str]]:
    size_mb = search["index_bytes"] / 1e6
    cost = search["turn_cost"]
    return [
        [
            f"search index built from the log ({sessions}); its size",
            f"{search['build_seconds']:.1f} s; {size_mb:,.0f} MB",
            "—",
        ],
        ["search, a word in no message, first page of 20", _lat(search["rare"]), "—"],
        [
            "search, a word in every message (ranks them all), first page",
            _lat(search["common"]),
            "—",
        ],
        [
            "indexing work a turn adds to the daemon (in-process, one SQLite transaction)",
            f"p50 {cost['p50_ms'] * 1000:.0f} µs, p99 {cost['p99_ms'] * 1000:.0f} µs",
            "—",
        ],
    ]


def reference_table(results: dict[str, Any]) -> str:
    """Ours against the Copilot SDK's runtime (an order of magnitude below is the aim)."""
    rows: list[list[str]] = []
    store = results.get("store")
    turns = results.get("turns", [])
    single = next((run for run in turns if run["clients"] == 1), None)
    pairs: list[tuple[str, float, float]] = []
    if store:
        ours = store["copilotd"]
        pairs.append(("create a session", ours["create"]["p50_ms"], REFERENCE_MS["create"]))
        large = store["resume_sizes"][-1]
        pairs.append(
            (
                f"resume ({int(large):,} events)",
                ours[f"resume_{large}"]["p50_ms"],
                REFERENCE_MS["resume"],
            )
        )
        per_session = ours["list_all"]["p50_ms"] / store["sessions"]
        pairs.append(
            (
                "list 500 sessions (ours: full listing's cost per session x 500)",
                per_session * 500,
                REFERENCE_MS["list_500"],
            )
        )
    if single:
        pairs.append(("a turn (1 client)", single["copilotd"]["p50_ms"], REFERENCE_MS["turn"]))
    cold = results.get("cold_start")
    if cold:
        pairs.append(
            ("client start to first call", cold["copilotd"]["p50_ms"], REFERENCE_MS["cold_start"])
        )
        if "auto_start" in cold:
            pairs.append(
                (
                    "client start with no daemon (auto-start) to first call",
                    cold["auto_start"]["p50_ms"],
                    REFERENCE_MS["cold_start"],
                )
            )
    for name, ours_ms, reference in pairs:
        rows.append([name, _ms(ours_ms), _ms(reference), f"{ours_ms / reference:.3f}x"])
    return table(["what", "copilotd", "Copilot SDK runtime", "ratio"], rows)


def cold_parts_table(results: dict[str, Any]) -> str:
    """The parts an auto-start waits for, timed alone in the same run (empty before they were)."""
    parts = results.get("cold_start", {}).get("auto_start_parts")
    if not parts:
        return ""
    rows = [[label, _lat(figures)] for label, figures in parts.items()]
    return table(["what bounds an auto-start (each part alone)", "p50 (p99)"], rows)
