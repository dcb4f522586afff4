"""Tables of the PostgreSQL store (``postgres``) and of search at size (``search-large``)."""

from __future__ import annotations

import math
from typing import Any

from bench._report import _batching, _lat, _ms, _rate, table

_DURABLE_SIDES = (
    ("bare pings, LMDB daemon (the floor)", "pings"),
    ("LMDB, one daemon", "lmdb"),
    ("PostgreSQL, one daemon", "one_daemon"),
    ("PostgreSQL, two daemons on one database", "two_daemons"),
)


def tables(results: dict[str, Any]) -> list[str]:
    found: list[str] = []
    postgres = results.get("postgres")
    if postgres and "skipped" in postgres:
        found.append(table(["PostgreSQL rows"], [[f"skipped: {postgres['skipped']}"]]))
    elif postgres:
        found += [
            postgres_store_table(postgres, results.get("store")),
            postgres_target_table(postgres),
            postgres_durable_table(postgres["durable"]),
            postgres_per_turn_table(postgres["durable"]),
        ]
    if "search_large" in results:
        found.append(search_large_table(results["search_large"]))
    return found


def postgres_store_table(postgres: dict[str, Any], lmdb: dict[str, Any] | None) -> str:
    """The probes of the seeded PostgreSQL store, beside the LMDB store's from the same run."""
    store = postgres["store"]
    ours, other = store["copilotd"], (lmdb or {}).get("copilotd", {})
    rows = [["bare ping, sequential", _lat(ours["ping"]), _lat(other.get("ping"))]]
    rows.append(["create a session", _lat(ours["create"]), _lat(other.get("create"))])
    for size in store["resume_sizes"]:
        rows.append(
            [
                f"resume + last 50 events, {int(size):,}-event session",
                _lat(ours[f"resume_{size}"]),
                _lat(other.get(f"resume_{size}")),
            ]
        )
    for size in store["resume_sizes"]:
        rows.append(
            [
                f"first turn after resume, {int(size):,}-event session",
                _lat(ours[f"first_turn_{size}"]),
                _lat(other.get(f"first_turn_{size}")),
            ]
        )
    rows.append(
        [
            f"list sessions, first page of 50 ({store['sessions']:,} sessions stored)",
            _lat(ours["list_first_page"]),
            _lat(other.get("list_first_page")),
        ]
    )
    rows.append(
        [
            f"list all {store['sessions']:,} sessions (pages of 1,000)",
            _ms(ours["list_all"]["p50_ms"]),
            _ms(other["list_all"]["p50_ms"]) if other else "—",
        ]
    )
    memory = store["memory"]
    rows.append(["daemon RSS after the probes", f"{memory['VmRSS']:.0f} MB", "—"])
    server = store["server"]
    rows.append(["server floor: `SELECT 1` round trip", _lat(server["round_trip"]), "—"])
    rows.append(
        ["server floor: one-row INSERT, durable commit", _lat(server["durable_commit"]), "—"]
    )
    rows.append(
        [
            "server floor: one-row INSERT, `synchronous_commit = off`",
            _lat(server["async_commit"]),
            "—",
        ]
    )
    per_resume = store.get("per_resume")
    if per_resume:
        kinds = ", ".join(
            f"{kind} {count:.1f}" for kind, count in sorted(per_resume.items()) if kind != "all"
        )
        rows.append(
            [
                "statements the server runs per resume",
                f"{per_resume['all']:.1f} ({kinds})",
                "—",
            ]
        )
    title = (
        f"PostgreSQL {postgres['server_version']} store: {store['sessions']:,} sessions / "
        f"{store['events']:,} events (seeded by COPY in {store['seed_seconds']:.0f} s)"
    )
    return table([title, "PostgreSQL", "LMDB (same run)"], rows)


def postgres_targets(postgres: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    """Issue 14's cost rules (the LMDB store's bounds) on the PostgreSQL store."""
    store = postgres["store"]
    ours = store["copilotd"]
    small, large = store["resume_sizes"][0], store["resume_sizes"][-1]
    ping = ours["ping"]["p50_ms"]
    resume_large = ours[f"resume_{large}"]["p50_ms"]
    found = [
        (
            f"resume of a {int(large):,}-event session / of a {int(small):,}-event one",
            resume_large / ours[f"resume_{small}"]["p50_ms"],
            "≤ 1.2x",
            1.2,
        ),
        (f"resume of a {int(large):,}-event session / bare ping", resume_large / ping, "≤ 3x", 3),
        (
            f"first page of list_sessions with {store['sessions']:,} sessions / bare ping",
            ours["list_first_page"]["p50_ms"] / ping,
            "≤ 3x",
            3,
        ),
    ]
    return [(name, ratio, bound, ratio <= limit) for name, ratio, bound, limit in found]


def postgres_target_table(postgres: dict[str, Any]) -> str:
    rows = [
        [name, f"{ratio:.2f}x", bound, "met" if met else "**missed**"]
        for name, ratio, bound, met in postgres_targets(postgres)
    ]
    return table(["PostgreSQL target", "measured", "bound", ""], rows)


def postgres_durable_table(durable: dict[str, Any]) -> str:
    lmdb = durable["lmdb"]["per_second"]
    rows = []
    for label, key in _DURABLE_SIDES:
        run = durable[key]
        daemon = run.get("daemon_cpu_ms_per_operation", math.nan)
        server = run.get("server_cpu_ms_per_operation")
        cpu = f"{_ms(daemon)}" + (f" + {_ms(server)}" if server is not None else "")
        cpu += f" + {_ms(run['client_cpu_ms_per_operation'])}"
        commits = durable["group_commit"].get(key)
        if isinstance(commits, list):  # two daemons: their logs added up
            commits = _added(commits)
        rows.append(
            [
                label,
                _rate(run["per_second"]),
                f"{run['per_second'] / lmdb:.2f}x",
                _ms(run["p50_ms"]),
                _ms(run["p99_ms"]),
                cpu,
                _batching(commits) if commits else "—",
            ]
        )
    header = [
        f"durable turns, {durable['processes']} processes, alternating slots",
        "per second",
        "/ LMDB",
        "p50",
        "p99",
        "CPU per turn: daemon(s) [+ server] + clients",
        "writes per durable transaction",
    ]
    return table(header, rows)


def _added(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """Two daemons' group-commit figures as one."""
    if not all("transactions" in log for log in logs):
        return {}
    operations = sum(log["operations"] for log in logs)
    transactions = sum(log["transactions"] for log in logs)
    return {
        "operations": operations,
        "transactions": transactions,
        "largest_batch": max(log["largest_batch"] for log in logs),
        "operations_per_transaction": operations / max(1, transactions),
    }


def postgres_per_turn_table(durable: dict[str, Any]) -> str:
    """What a turn asked of the server: statements by kind, and WAL syncs."""
    per_turn = durable["per_turn"]
    sides = [("one daemon", per_turn["postgresql-1"]), ("two daemons", per_turn["postgresql-2"])]
    kinds = sorted({kind for _, side in sides for kind in side["statements"]} - {"all"})
    rows = [
        [f"statements: {kind}", *(f"{side['statements'].get(kind, 0):.1f}" for _, side in sides)]
        for kind in (*kinds, "all")
    ]
    if "wal_syncs" in per_turn:
        both = f"{per_turn['wal_syncs']:.2f} (both databases)"
        rows.append(["WAL syncs (commit fsyncs)", both, both])
        rows.append(["WAL bytes", *(f"{per_turn['wal_bytes'] / 1000:.1f} kB" for _ in sides)])
    return table(["per durable turn, on the server", *(name for name, _ in sides)], rows)


def search_large_table(search: dict[str, Any]) -> str:
    rows = []
    for run in search["runs"]:
        ping = run["ping"]["p50_ms"]
        cost = run["turn_cost"]
        rows.append(
            [
                f"{run['sessions']:,} / {run['events']:,}",
                f"{run['index_bytes'] / 1e6:,.0f} MB ({run['index_bytes'] / run['events']:.0f} B)",
                _lat(run["ping"]),
                f"{_lat(run['rare'])}; {run['rare']['p50_ms'] / ping:.1f}x",
                f"{_lat(run['common'])}; {run['common']['p50_ms'] / ping:,.0f}x",
                f"{cost['p50_ms'] * 1000:.0f} µs (p99 {cost['p99_ms'] * 1000:.0f} µs)",
            ]
        )
    growth = search["growth"]
    rows.append(
        [
            f"growth for {growth['events']:.1f}x the events",
            f"{growth['index_bytes']:.2f}x",
            "—",
            f"{growth['rare_p50']:.2f}x",
            f"{growth['common_p50']:.2f}x",
            "—",
        ]
    )
    header = [
        "search: sessions / events",
        "index size (per event)",
        "bare ping",
        "a word in no message; / ping",
        "a word in every message; / ping",
        "a turn's indexing on that index",
    ]
    return table(header, rows)
