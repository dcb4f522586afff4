"""``python -m bench [--quick]``: run every benchmark, print the tables, write JSON.

The benchmarks, each on a daemon of its own (temp socket, temp data dir):

* ``store``: a store seeded with 100,000 sessions / 10 million events:
  resume latency by session size, a resumed session's first turn, listing,
  create, the bare ping on the same socket, deleting a large session while
  another one works, and the daemon's resident memory.
* ``turns``: turns per second from 1, 8 and 32 clients spread over several
  processes, next to bare pings per second from as many callers and the
  baseline's turns from as many sessions, in alternating slots
  (``bench/_slots.py``), with the CPU each costs the daemon and the clients.
* ``durable``: durable turns from 16 client processes: throughput, p50/p99
  latency and each process's share, copilotd and the baseline alternating.
* ``cold``: a client process's start to its first answered call.
* ``fork``: ``ForkSession`` on a session of 10 events and on one of 100,000
  (``bench/_fork.py``), beside a bare ping.
* ``postgres`` (full mode, or by name): the PostgreSQL store on a private
  cluster: resume, listing and the other probes at 100,000 sessions, and
  durable turns through one and two daemons next to LMDB's
  (``bench/_pg.py``).
* ``search-large`` (by name only): search latency and index size at
  100,000 sessions / 10 million events and at a tenth of that
  (``bench/_search_large.py``).
* ``search-pg`` (by name only): search on PostgreSQL's own full-text
  search next to the SQLite index on the same sessions, both built from
  the log, and what the entries add to a turn's append
  (``bench/_search_pg.py``).

The ``store`` benchmark also times search across sessions: the index built
from the seeded log (by the daemon's catch-up, before it starts), its size,
a search for a word in every message and for one in none, and the indexing
work a turn adds (in-process); and compaction (``bench/_compaction.py``,
in-process): a long session's context loaded with and without a compaction,
and the daemon's own work for one compaction.

Each is run for copilotd and for the baseline (``bench/_baseline.py``) in the
same run, from the same number of processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import (
    _baseline,
    _cold,
    _compaction,
    _fork,
    _ours,
    _pg,
    _profile,
    _report,
    _report_more,
    _search,
    _search_large,
    _search_pg,
    _seed,
    _slots,
)
from bench._daemon import PURGED, BenchDaemon
from bench._procs import CpuSampler, Timed, latency_summary, run_processes, shared_event, split
from bench._sizes import MODES, Sizes
from tests.support.daemon_process import short_temp_dir

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS = ("store", "turns", "durable", "cold", "fork", "postgres", "search-large", "search-pg")
# What runs when ``--only`` is not given: the heavy benchmarks only in full mode
# or by name. A new benchmark is a name here, a function called in ``run``
# whose results go under a key of their own, and a table in ``render``.
DEFAULT_BENCHMARKS = {
    "full": ("store", "turns", "durable", "cold", "fork", "postgres"),
    "quick": ("store", "turns", "durable", "cold", "fork"),
    "tiny": ("store", "turns", "durable", "cold", "fork"),
}
# Longest wait for a deleted session's events to be purged.
PURGE_TIMEOUT = 120.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# The large store


def bench_store(root: Path, sizes: Sizes, seed_cache: Path) -> dict[str, Any]:
    layout, store_dir, sqlite_file = _seed.seeded(seed_cache, sizes, log)
    daemon = BenchDaemon(root / "store", seeded_store=store_dir).start()
    memory: dict[str, dict[str, float]] = {}
    try:
        memory["idle"] = daemon.memory_mb()
        log("store: search")
        search = _search.probe(daemon.socket, daemon.data_dir)
        search["build_seconds"] = daemon.index_build_seconds
        params = {
            "socket": daemon.socket,
            "resume_ids": layout.resume_ids,
            "calls": sizes.calls,
            "full_listings": sizes.full_listings,
            "first_turns": _ours.FIRST_TURNS,
            "prompt_bytes": sizes.prompt_bytes,
        }
        log("store: copilotd probes (ping, resume, list, create, first turns)")
        (probe,) = run_processes([(_ours.probe_worker, params)])
        memory["after_reads"] = daemon.memory_mb()
        log("store: deleting a large session while another session takes turns")
        delete = _delete_stall(daemon, layout, sizes)
        memory["end"] = daemon.memory_mb()
    finally:
        group_commit = daemon.stop()
    delete = _purge_stall(delete, group_commit.pop("purges"))
    log("store: baseline probes (resume, list, history reads)")
    (base,) = run_processes([(_baseline.probe_worker, {**params, "path": str(sqlite_file)})])
    return {
        "sessions": layout.total_sessions,
        "events": layout.total_events,
        "resume_sizes": list(layout.resume_ids),
        "seed_seconds": layout.seconds,
        "copilotd": probe.extra,
        "baseline": base.extra,
        "delete": delete,
        "memory": memory,
        "group_commit": group_commit,
        "search": {**search, "turn_cost": _search.turn_cost()},
        "compaction": _compaction.cost(),
    }


def _delete_stall(daemon: BenchDaemon, layout: _seed.Layout, sizes: Sizes) -> dict[str, Any]:
    """Delete the largest session while another session takes turns back to back.

    The other session goes on until the deleted events are purged (the daemon
    logs it); returns the deletion's own latency and the other session's
    turns (see ``_purge_stall``).
    """
    size = max(layout.resume_ids, key=int)
    stop = shared_event()

    def stop_after_the_purge() -> None:
        daemon.wait_for_log(PURGED, PURGE_TIMEOUT)
        time.sleep(0.5)
        stop.set()

    turns, delete = run_processes(
        [
            (
                _ours.turns_worker,
                {
                    "socket": daemon.socket,
                    "clients": 1,
                    "seconds": PURGE_TIMEOUT,
                    "prefix": "during-delete",
                    "prompt_bytes": sizes.prompt_bytes,
                    "stop": stop,
                },
            ),
            (
                _ours.delete_worker,
                {"socket": daemon.socket, "session_id": layout.resume_ids[size][-1], "delay": 1.0},
            ),
        ],
        on_start=lambda: threading.Thread(target=stop_after_the_purge, daemon=True).start(),
    )
    (begin, end) = delete.spans[0]
    return {
        "session_events": int(size),
        "delete_ms": (end - begin) * 1000,
        "begin": begin,
        "end": end,
        "turns_end": turns.deadline,
        "other_spans": turns.spans,
        "other_p50_ms": latency_summary([e - s for s, e in turns.spans if e < begin])["p50_ms"],
    }


def _purge_stall(delete: dict[str, Any], purges: list[dict[str, Any]]) -> dict[str, Any]:
    """The other session's slowest turn while the deleted session was being purged."""
    purge = purges[-1] if purges else {"events": 0, "seconds": 0.0, "steps": 0}
    until = delete["end"] + purge["seconds"]
    during = [e - s for s, e in delete.pop("other_spans") if e > delete["begin"] and s < until]
    return {
        **delete,
        "purged_events": purge["events"],
        "purge_seconds": purge["seconds"],
        "purge_steps": purge["steps"],
        "purge_within_run": until <= delete["turns_end"],
        "other_turns_during": len(during),
        "other_max_ms": max(during, default=0.0) * 1000,
        "other_during": latency_summary(during),
    }


# Turns


def _interleaved(
    daemon: BenchDaemon,
    kinds: list[str],
    per_process: list[int],
    common: dict[str, Any],
    seconds: float,
    slot_seconds: float,
) -> tuple[dict[str, dict[str, Any]], list[Timed]]:
    """Run ``kinds`` of load in alternating slots (``bench/_slots.py``); figures per kind."""
    slots = len(kinds) * max(1, round(seconds / slot_seconds))
    params = {**common, "socket": daemon.socket, "slots": slots, "slot_seconds": slot_seconds}
    with CpuSampler(daemon.cpu_seconds) as cpu:
        results = run_processes(_slots.jobs(kinds, per_process, params))
    figures = {
        kind: _slots.figures(results, kind, None if kind == _slots.BASELINE else cpu)
        for kind in kinds
    }
    return figures, results


def _profiled_turns(
    root: Path, daemon: BenchDaemon, per_process: list[int], common: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """Record the daemon with py-spy during copilotd turns only (``--profile``)."""
    raw = root / "profile.txt"
    recordings: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        recordings.append(_profile.start(daemon.pid, seconds - 0.5, raw))

    params = {**common, "socket": daemon.socket, "slots": 1, "slot_seconds": seconds}
    run_processes(_slots.jobs([_slots.TURNS], per_process, params), on_start=start)
    for recording in recordings:
        recording.wait(60)
    return _profile.summarize(raw)


def bench_turns(root: Path, sizes: Sizes, profile: bool) -> list[dict[str, Any]]:
    runs = []
    kinds = [_slots.PINGS, _slots.TURNS, _slots.BASELINE]
    for clients in sizes.client_counts:
        per_process = split(clients, sizes.client_processes)
        common = {
            "prompt_bytes": sizes.prompt_bytes,
            "prefix": f"t{clients}",
            "path": str(root / f"baseline-turns{clients}.db"),
        }
        daemon = BenchDaemon(root / f"turns{clients}").start()
        try:
            log(
                f"turns: {clients} clients in {len(per_process)} processes: "
                "pings, copilotd turns and baseline turns in alternating slots"
            )
            figures, _ = _interleaved(
                daemon, kinds, per_process, common, sizes.turn_seconds, sizes.slot_seconds
            )
            if profile and clients == max(sizes.client_counts):
                log("turns: profiling the daemon under copilotd turns alone")
                figures[_slots.TURNS]["profile"] = _profiled_turns(
                    root, daemon, per_process, {**common, "prefix": "profiled"}, sizes.turn_seconds
                )
        finally:
            group_commit = daemon.stop()
        runs.append(
            {
                "clients": clients,
                "processes": len(per_process),
                "pings": figures[_slots.PINGS],
                "copilotd": figures[_slots.TURNS],
                "baseline": figures[_slots.BASELINE],
                "group_commit": group_commit,
            }
        )
    return runs


def bench_durable(root: Path, sizes: Sizes) -> dict[str, Any]:
    processes = sizes.durable_processes
    common = {
        "prompt_bytes": sizes.prompt_bytes,
        "prefix": "durable",
        "path": str(root / "baseline-durable.db"),
    }
    daemon = BenchDaemon(root / "durable").start()
    try:
        log(
            f"durable: {processes} client processes, pings, copilotd turns and baseline "
            "turns in alternating slots"
        )
        figures, results = _interleaved(
            daemon,
            [_slots.PINGS, _slots.TURNS, _slots.BASELINE],
            [1] * processes,
            common,
            sizes.durable_seconds,
            sizes.slot_seconds,
        )
    finally:
        group_commit = daemon.stop()
    return {
        "processes": processes,
        "pings": figures[_slots.PINGS],
        "copilotd": figures[_slots.TURNS],
        "baseline": figures[_slots.BASELINE],
        "baseline_synchronous": sorted({r.extra["synchronous"] for r in results}),
        "group_commit": group_commit,
    }


# The run


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        memory_kb = 0
    versions = {}
    for package in ("grpcio", "protobuf", "lmdb", "openai-agents"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    import sqlite3

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1e6, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        **versions,
        "load_before": os.getloadavg(),
    }


def run(
    sizes: Sizes, only: tuple[str, ...], seed_cache: Path | None, out: Path, profile: bool = False
) -> dict[str, Any]:
    root = short_temp_dir("cpdb")
    results: dict[str, Any] = {
        "mode": sizes.name,
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    began = time.monotonic()
    try:
        if "store" in only:
            results["store"] = bench_store(root, sizes, seed_cache or root / "seed")
        if "turns" in only:
            results["turns"] = bench_turns(root, sizes, profile)
        if "durable" in only:
            results["durable"] = bench_durable(root, sizes)
        if "cold" in only:
            log("cold start: client processes, with and without a daemon running")
            results["cold_start"] = _cold.bench_cold(root, sizes.cold_starts)
        if "postgres" in only:
            results["postgres"] = _pg.bench_postgres(root, sizes, log)
        if "search-large" in only:
            results["search_large"] = _search_large.bench_search_large(
                root, sizes, seed_cache or root / "seed", log
            )
        if "fork" in only:
            results["fork"] = _fork.bench_fork(root, sizes)
        if "search-pg" in only:
            log("search on PostgreSQL next to the SQLite index")
            results["search_pg"] = _search_pg.bench_search_pg(root, sizes)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["seconds"] = time.monotonic() - began
    results["machine"]["load_after"] = os.getloadavg()
    found = _report.targets(results)
    results["targets"] = [t.__dict__ for t in found]
    text = render(results)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in (f"{sizes.name}-{stamp}", f"{sizes.name}-latest"):
        (out / f"{name}.json").write_text(json.dumps(results, indent=2, default=str))
        (out / f"{name}.md").write_text(text + "\n")
    print(text)
    log(f"done in {results['seconds']:.0f} s; results in {out}/{sizes.name}-latest.json")
    return results


def render(results: dict[str, Any]) -> str:
    """The tables of a run, from its results (as written to the JSON file)."""
    tables = [
        _report.side_by_side(results),
        _report.target_table(_report.targets(results)),
        _report.reference_table(results),
        _report.profile_table(results),
        _report.cold_parts_table(results),
        *_report_more.tables(results),
        _fork.fork_table(results),
        _search_pg.search_pg_table(results),
    ]
    # A table with no rows (its benchmarks did not run) is left out.
    return "\n\n".join(text for text in tables if text.count("\n") > 1).strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--mode",
        choices=sorted(MODES),
        default="full",
        help="full: the sizes the targets are stated for (default); "
        "quick: a few minutes; tiny: only checks that it all runs",
    )
    parser.add_argument(
        "--quick", action="store_const", dest="mode", const="quick", help="same as --mode quick"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        help="run only these benchmarks (default: all but postgres, search-large and "
        "search-pg; "
        "full mode adds postgres)",
    )
    parser.add_argument(
        "--seed-cache",
        type=Path,
        help="keep the seeded stores here and reuse them in later runs "
        "(default: seed into a temp dir and delete it)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help=f"where the JSON and Markdown results go (default {RESULTS_DIR})",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the daemon with py-spy during the widest turns run (needs ptrace rights)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="RESULTS_JSON",
        help="print the tables of an earlier run from its JSON file, and run nothing",
    )
    args = parser.parse_args(argv)
    if args.report:
        print(render(json.loads(args.report.read_text())))
        return
    only = tuple(args.only or DEFAULT_BENCHMARKS[args.mode])
    run(MODES[args.mode], only, args.seed_cache, args.out, args.profile)
