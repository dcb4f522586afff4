"""The benchmark suite still runs, end to end, at tiny sizes (no figure is judged here).

It starts real daemons and real client processes, and the baseline, so a
change that breaks any benchmark (or makes one measure nothing) fails here
rather than on the day someone needs the numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import _pg, _slots
from bench._search_large import SMALLER
from bench._seed import plan
from bench._sizes import TINY
from bench.run import render
from tests.support.postgres import PostgresUnavailable, unavailable

ROOT = Path(__file__).resolve().parent.parent


def run_bench(out: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--mode", "tiny", "--out", str(out), *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.timeout(400)
def test_the_suite_runs_and_measures_every_benchmark(tmp_path: Path) -> None:
    result = run_bench(tmp_path)
    assert "| what | copilotd | baseline: SQLiteSession |" in result.stdout
    results = json.loads((tmp_path / "tiny-latest.json").read_text())
    assert (tmp_path / "tiny-latest.md").read_text().strip() in result.stdout

    layout = plan(TINY)
    store = results["store"]
    assert (store["sessions"], store["events"]) == (layout.total_sessions, layout.total_events)
    # Full listings saw every stored session, on both sides.
    assert store["copilotd"]["listed_sessions"] == [layout.total_sessions] * TINY.full_listings
    assert store["baseline"]["listed_sessions"] == [layout.total_sessions] * TINY.full_listings
    for size in layout.resume_ids:
        assert store["copilotd"][f"resume_{size}"]["n"] >= TINY.calls
        assert store["baseline"][f"resume_{size}"]["n"] >= TINY.calls
    assert store["delete"]["other_turns_during"] >= 1
    assert store["memory"]["idle"]["VmRSS"] > 0

    assert [run["clients"] for run in results["turns"]] == list(TINY.client_counts)
    durable = results["durable"]
    assert durable["baseline_synchronous"] == [2]  # PRAGMA synchronous=FULL took effect
    assert durable["copilotd"]["operations"] > 0 and durable["baseline"]["operations"] > 0
    assert len(durable["copilotd"]["shares"]) == TINY.durable_processes
    # Every turn is two durable writes (the user message, then the answer).
    assert durable["group_commit"]["operations"] >= 2 * durable["copilotd"]["operations"]
    assert durable["group_commit"]["exit_code"] == 0

    assert results["cold_start"]["copilotd"]["n"] == TINY.cold_starts
    assert results["cold_start"]["auto_start"]["n"] == TINY.cold_starts
    assert results["cold_start"]["auto_start_existing"]["n"] == TINY.cold_starts
    assert results["cold_start"]["auto_start_cpu"]["p50_ms"] > 0
    parts = results["cold_start"]["auto_start_parts"]
    assert len(parts) == 9 and {p["n"] for p in parts.values()} == {TINY.cold_starts}
    # The client's imports before and after it launches the daemon, timed apart.
    assert "the client's imports after the launch (grpc, stubs, sessions)" in parts
    assert len(results["cold_start"]["bytecode"]["compiled"]) == 2
    assert "| what bounds an auto-start (each part alone) |" in result.stdout
    assert len(results["targets"]) == 12

    fork = results["fork"]
    assert fork["small"]["n"] == fork["large"]["n"] == fork["indexing"]["large"]["n"] == 3
    assert fork["events"] == {"small": 10, "large": 1_000}
    assert "| fork cost at 10 vs 100,000 events | latency |" in result.stdout
    # The heavy ones run by name or in full mode only.
    assert "postgres" not in results and "search_large" not in results


@pytest.mark.timeout(400)
def test_the_postgresql_and_large_search_benchmarks_run_by_name(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "--only", "postgres", "search-large")
    results = json.loads((tmp_path / "tiny-latest.json").read_text())
    postgres = results["postgres"]
    if "skipped" in postgres:
        assert f"PostgreSQL rows skipped: {postgres['skipped']}" in result.stdout
        unavailable(postgres["skipped"])

    layout = _pg.layout(TINY)
    store = postgres["store"]
    assert (store["sessions"], store["events"]) == (layout.total_sessions, layout.total_events)
    # The COPY-seeded store lists every session through a daemon.
    assert store["copilotd"]["listed_sessions"] == [layout.total_sessions] * TINY.full_listings
    for size in layout.resume_ids:
        assert store["copilotd"][f"resume_{size}"]["n"] >= TINY.calls
    assert store["server"]["durable_commit"]["n"] >= TINY.calls
    durable = postgres["durable"]
    for side in ("pings", "lmdb", "one_daemon", "two_daemons"):
        assert durable[side]["operations"] > 0, side
    # Both daemons on the shared database ran turns (two writes each; a daemon
    # that served none writes once, at start) and stopped cleanly.
    two = durable["group_commit"]["two_daemons"]
    assert [log["exit_code"] for log in two] == [0, 0]
    assert all(log["operations"] >= 2 * _slots.WARMUP for log in two), two
    for side in ("postgresql-1", "postgresql-2"):
        statements = durable["per_turn"][side]["statements"]
        # A turn opens and frees its lease and tells the other daemons, in the database.
        assert statements["lease"] > 0 and statements["notification"] > 0, statements
    assert durable["per_turn"]["wal_syncs"] > 0
    assert "| PostgreSQL target | measured | bound |  |" in result.stdout
    assert "| per durable turn, on the server | one daemon | two daemons |" in result.stdout

    small, large = results["search_large"]["runs"]
    assert large["events"] == plan(TINY).total_events
    assert small["events"] < large["events"]
    assert large["events"] // SMALLER <= small["events"]
    for run in (small, large):
        assert run["hits"] == {"rare": 0, "common": 20}
        assert run["index_rows"] > 0 and run["index_bytes"] > 0
        assert run["turn_cost"]["n"] > 0
    assert "| search: sessions / events |" in result.stdout


def test_without_postgresql_its_rows_are_skipped_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_server(settings: tuple[str, ...]) -> None:
        raise PostgresUnavailable("PostgreSQL's server programs (initdb, pg_ctl) are not installed")

    monkeypatch.setattr(_pg, "start_cluster", no_server)
    results = {"postgres": _pg.bench_postgres(tmp_path, TINY, lambda message: None)}
    reason = "PostgreSQL's server programs (initdb, pg_ctl) are not installed"
    assert results["postgres"] == {"skipped": reason}
    assert f"PostgreSQL rows skipped: {reason}" in capsys.readouterr().out
    assert f"| skipped: {reason} |" in render(results)


@pytest.mark.timeout(400)
def test_the_search_on_postgresql_benchmark_runs_by_name(tmp_path: Path) -> None:
    from bench._search_pg import QUERIES, SEARCHES, TURNS_TIMED

    try:
        result = run_bench(tmp_path, "--only", "search-pg")
    except AssertionError as error:
        if "PostgresUnavailable" in str(error):
            unavailable(str(error))
        raise
    found = json.loads((tmp_path / "tiny-latest.json").read_text())["search_pg"]
    assert set(found["queries"]) == set(QUERIES)
    for figures in found["queries"].values():
        assert figures["sqlite"]["n"] == figures["pg"]["n"] == SEARCHES["tiny"]
    assert found["turn"]["indexed"]["n"] == found["turn"]["bare"]["n"] == TURNS_TIMED["tiny"]
    assert found["pg_bytes"] > 0 and found["sqlite_bytes"] > 0
    assert "Search on PostgreSQL vs the SQLite index" in result.stdout
