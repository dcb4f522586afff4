"""``postgres``: the PostgreSQL store (issue 14), in the same run as the LMDB rows.

The server is a private cluster started the way the tests start theirs
(``tests/support/postgres.py``), but with the server's durable defaults
(every commit synced: ``DURABLE_SETTINGS``) and ``pg_stat_statements``
loaded, so that what a turn asks of the server can be counted. Without
``initdb`` the rows are skipped and the run says why.

* **store**: a database seeded with the same 100,000 sessions and resume
  sizes as the LMDB store (``bench/_pg_seed.py``: ``COPY`` through the
  store's own schema; shorter fillers), one daemon on it, and the same
  probe as the LMDB store (``_ours.probe_worker``): pings, resumes by
  session size, first list page, full listings, creates, first turns. Next
  to it, from this process: a ``SELECT 1`` round trip and a one-row durable
  commit on the same server, the floors a daemon's write sits on.
* **durable**: durable turns from the same client processes, in alternating
  slots (``bench/_slots.py``): bare pings and turns on an LMDB daemon, turns
  on one daemon on a PostgreSQL database, and turns through two daemons on
  another database (the processes split between them). Then, per turn on
  each database, the statements the server ran (by kind: leases,
  notifications, event rows, session rows, transaction control), and WAL
  syncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Final

import psycopg

from bench import _ours, _seed, _slots
from bench._daemon import BenchDaemon
from bench._index_seed import seed_index
from bench._pg_seed import seed_postgres
from bench._procs import CpuSampler, Timed, latency_summary, run_processes, wait_at
from bench._sizes import Sizes
from tests.support.postgres import (
    DURABLE_SETTINGS,
    PostgresCluster,
    PostgresUnavailable,
    start_cluster,
)

PG_ONE: Final = "postgresql-1"
PG_TWO: Final = "postgresql-2"
SETTINGS: Final = (*DURABLE_SETTINGS, "shared_preload_libraries=pg_stat_statements")
# Reading every server process's CPU scans /proc: less often than a daemon's.
SERVER_CPU_INTERVAL: Final = 0.25
# What a statement is for, by the first of these its text holds.
STATEMENT_KINDS: Final = (
    ("lease", "turn_leases"),
    ("notification", "pg_notify"),
    ("event rows", ".events"),
    ("session row", ".sessions"),
    ("transaction control", "BEGIN"),
    ("transaction control", "COMMIT"),
    ("transaction control", "SAVEPOINT"),
    ("transaction control", "RELEASE"),
    ("transaction control", "ROLLBACK"),
)


def layout(sizes: Sizes) -> _seed.Layout:
    """The LMDB store's sessions and resume sizes, with ``pg_filler_events`` per filler."""
    full = _seed.plan(sizes)
    resumed = sum(int(size) * len(ids) for size, ids in full.resume_ids.items())
    return _seed.Layout(
        resume_ids=full.resume_ids,
        filler_sessions=full.filler_sessions,
        filler_events=sizes.pg_filler_events,
        sizes_name=sizes.name,
        total_sessions=full.total_sessions,
        total_events=resumed + full.filler_sessions * sizes.pg_filler_events,
        start_ns=full.start_ns,
    )


def bench_postgres(root: Path, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    try:
        cluster = start_cluster(SETTINGS)
    except PostgresUnavailable as error:
        reason = f"PostgreSQL rows skipped: {error}"
        print(reason, flush=True)
        log(reason)
        return {"skipped": str(error)}
    try:
        with cluster.admin() as connection:
            connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            version = connection.execute("SHOW server_version").fetchone()
        return {
            "server_version": version[0] if version else "",
            "store": _store(root, cluster, sizes, log),
            "durable": _durable(root, cluster, sizes, log),
        }
    finally:
        cluster.stop()


def _store(
    root: Path, cluster: PostgresCluster, sizes: Sizes, log: Callable[[str], None]
) -> dict[str, Any]:
    database = cluster.create_database()
    dsn = cluster.dsn(database)
    seeded = layout(sizes)
    log(f"postgres: seeding {seeded.total_sessions:,} sessions / {seeded.total_events:,} events")
    seed_seconds = seed_postgres(dsn, seeded)
    floors = server_floors(dsn, sizes.calls)
    # The daemon's search index is told everything is indexed (cursors only):
    # these figures are not about search, and a catch-up would read every event.
    daemon = BenchDaemon(
        root / "pg-store",
        seed_index=functools.partial(seed_index, layout=seeded, texts=False),
        store_dsn=dsn,
    ).start()
    try:
        log("postgres: probes (ping, resume, list, create, first turns)")
        params = {
            "socket": daemon.socket,
            "resume_ids": seeded.resume_ids,
            "calls": sizes.calls,
            "full_listings": sizes.full_listings,
            "first_turns": _ours.FIRST_TURNS,
            "prompt_bytes": sizes.prompt_bytes,
        }
        (probe,) = run_processes([(_ours.probe_worker, params)])
        memory = daemon.memory_mb()
        largest = seeded.resume_ids[str(max(map(int, seeded.resume_ids)))]
        per_resume = resume_statements(cluster, database, daemon.socket, largest, sizes.calls)
    finally:
        group_commit = daemon.stop()
    return {
        "sessions": seeded.total_sessions,
        "events": seeded.total_events,
        "resume_sizes": list(seeded.resume_ids),
        "seed_seconds": seed_seconds,
        "copilotd": probe.extra,
        "server": floors,
        "per_resume": per_resume,
        "memory": memory,
        "group_commit": group_commit,
    }


def server_floors(dsn: str, calls: int) -> dict[str, Any]:
    """A ``SELECT 1`` round trip, and a one-row insert committed durably and not, from
    one connection in rounds of ten: what any daemon write costs at least."""
    samples: dict[str, list[float]] = {"round_trip": [], "durable_commit": [], "async_commit": []}
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS bench_floor (n integer)")
        for _ in range(max(1, calls // 10)):
            for kind, setting, statement in (
                ("round_trip", "on", "SELECT 1"),
                ("durable_commit", "on", "INSERT INTO bench_floor VALUES (1)"),
                ("async_commit", "off", "INSERT INTO bench_floor VALUES (1)"),
            ):
                connection.execute(f"SET synchronous_commit = {setting}")
                for _ in range(10):
                    began = time.perf_counter()
                    connection.execute(statement)
                    samples[kind].append(time.perf_counter() - began)
    return {kind: latency_summary(values) for kind, values in samples.items()}


def _durable(
    root: Path, cluster: PostgresCluster, sizes: Sizes, log: Callable[[str], None]
) -> dict[str, Any]:
    databases = {PG_ONE: cluster.create_database(), PG_TWO: cluster.create_database()}
    lmdb = BenchDaemon(root / "pg-lmdb")
    one = BenchDaemon(root / "pg-one", store_dsn=cluster.dsn(databases[PG_ONE]))
    two = [
        BenchDaemon(root / f"pg-two{n}", store_dsn=cluster.dsn(databases[PG_TWO])) for n in range(2)
    ]
    daemons = [lmdb, one, *two]
    kinds = [_slots.PINGS, _slots.TURNS, PG_ONE, PG_TWO]
    processes = sizes.durable_processes
    common = {
        "socket": "",
        "kinds": kinds,
        "clients": 1,
        "prompt_bytes": sizes.prompt_bytes,
        "prefix": "pg-durable",
        "slots": len(kinds) * max(1, round(sizes.durable_seconds / sizes.slot_seconds)),
        "slot_seconds": sizes.slot_seconds,
    }
    try:
        for daemon in daemons:
            daemon.start()
        jobs = [
            (
                _slots.worker,
                {
                    **common,
                    "socket": lmdb.socket,
                    "turn_sockets": {PG_ONE: one.socket, PG_TWO: two[n % 2].socket},
                },
            )
            for n in range(processes)
        ]
        reset_statistics(cluster)
        log(
            f"postgres: durable turns from {processes} processes: LMDB, one daemon on "
            "PostgreSQL, two daemons on one database, in alternating slots"
        )
        samplers = {
            _slots.PINGS: CpuSampler(lmdb.cpu_seconds),
            PG_ONE: CpuSampler(one.cpu_seconds),
            PG_TWO: CpuSampler(lambda: sum(daemon.cpu_seconds() for daemon in two)),
            "server": CpuSampler(
                functools.partial(server_cpu_seconds, cluster), SERVER_CPU_INTERVAL
            ),
        }
        with contextlib.ExitStack() as sampling:
            for sampler in samplers.values():
                sampling.enter_context(sampler)
            results = run_processes(jobs)
    finally:
        group_commits = [daemon.stop() for daemon in daemons]
    figures: dict[str, Any] = {
        kind: _slots.figures(
            results, kind, samplers[_slots.PINGS if kind == _slots.TURNS else kind]
        )
        for kind in kinds
    }
    for kind in (PG_ONE, PG_TWO):
        server = _slots.figures(results, kind, samplers["server"])
        figures[kind]["server_cpu_ms_per_operation"] = server["daemon_cpu_ms_per_operation"]
    turns = {kind: turns_run(results, kind) for kind in (PG_ONE, PG_TWO)}
    return {
        "processes": processes,
        "pings": figures[_slots.PINGS],
        "lmdb": figures[_slots.TURNS],
        "one_daemon": figures[PG_ONE],
        "two_daemons": figures[PG_TWO],
        "per_turn": per_turn(cluster, databases, turns),
        "group_commit": {
            "lmdb": group_commits[0],
            "one_daemon": group_commits[1],
            "two_daemons": group_commits[2:],
        },
    }


def turns_run(results: list[Timed], kind: str) -> int:
    """Every turn of ``kind`` the run made, counted or not, warm-ups included."""
    slotted = sum(
        len(slot["spans"])
        for timed in results
        for slot in timed.extra["slots"]
        if slot["kind"] == kind
    )
    return slotted + len(results) * _slots.WARMUP


def reset_statistics(cluster: PostgresCluster) -> None:
    with cluster.admin() as connection:
        connection.execute("SELECT pg_stat_statements_reset(), pg_stat_reset_shared('wal')")


def statements_per(
    connection: psycopg.Connection[Any], database: str, operations: int
) -> dict[str, float]:
    """Statements the server ran on ``database`` since the statistics were reset, by
    kind (``STATEMENT_KINDS``), per operation."""
    counted: dict[str, float] = {}
    rows = connection.execute(
        "SELECT s.query, s.calls FROM pg_stat_statements s"
        " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
        (database,),
    ).fetchall()
    for query, calls in rows:
        what = next((k for k, mark in STATEMENT_KINDS if mark in query), "other")
        counted[what] = counted.get(what, 0) + calls / operations
    counted["all"] = sum(calls for _, calls in rows) / operations
    return counted


def per_turn(
    cluster: PostgresCluster, databases: dict[str, str], turns: dict[str, int]
) -> dict[str, Any]:
    """Statements by kind per turn on each database, and WAL syncs per turn over both
    (read after the daemons stopped, when their statistics are flushed)."""
    figures: dict[str, Any] = {}
    with cluster.admin() as connection:
        for kind, name in databases.items():
            figures[kind] = {
                "turns": turns[kind],
                "statements": statements_per(connection, name, turns[kind]),
            }
        wal = connection.execute(
            "SELECT wal_sync, wal_write, wal_bytes FROM pg_stat_wal"
        ).fetchone()
    if wal is not None:
        pg_turns = sum(turns.values())
        figures["wal_syncs"] = wal[0] / pg_turns
        figures["wal_writes"] = wal[1] / pg_turns
        figures["wal_bytes"] = float(wal[2]) / pg_turns
    return figures


async def _resumes(params: dict[str, Any], barrier: Barrier) -> Timed:
    client = await _ours.connect(params["socket"])
    started = await asyncio.to_thread(wait_at, barrier)
    for number in range(params["calls"]):
        session = await client.resume_session(params["ids"][number % len(params["ids"])])
        await session.destroy()
    await client.stop()
    return Timed(started=started, deadline=time.monotonic())


def resume_worker(params: dict[str, Any], barrier: Barrier) -> Timed:
    return asyncio.run(_resumes(params, barrier))


def resume_statements(
    cluster: PostgresCluster, database: str, socket: str, ids: list[str], calls: int
) -> dict[str, float]:
    """What one resume (of the sessions ``ids``) asks of the server, by kind."""
    reset_statistics(cluster)
    run_processes([(resume_worker, {"socket": socket, "ids": ids, "calls": calls})])
    with cluster.admin() as connection:
        return statements_per(connection, database, calls)


def server_cpu_seconds(cluster: PostgresCluster) -> float:
    """CPU time of the server's postmaster and its child processes (backends, WAL
    writer, checkpointer) so far, user and system."""
    postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(entry) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
