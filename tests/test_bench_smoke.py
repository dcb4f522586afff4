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

from bench._seed import plan
from bench._sizes import TINY

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(400)
def test_the_suite_runs_and_measures_every_benchmark(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--mode", "tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
    )
    assert result.returncode == 0, result.stderr[-4000:]
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
    assert len(parts) == 8 and {p["n"] for p in parts.values()} == {TINY.cold_starts}
    assert len(results["cold_start"]["bytecode"]["compiled"]) == 2
    assert "| what bounds an auto-start (each part alone) |" in result.stdout
    assert len(results["targets"]) == 12

    fork = results["fork"]
    assert fork["small"]["n"] == fork["large"]["n"] == fork["indexing"]["large"]["n"] == 3
    assert fork["events"] == {"small": 10, "large": 1_000}
    assert "| fork cost at 10 vs 100,000 events | latency |" in result.stdout
