"""``--only search-large``: search at 100,000 sessions / 10 million events (issue 15).

The store is the seeded one the ``store`` benchmark uses (``bench/_seed.py``,
shared through the seed cache), and its index is written directly
(``bench/_index_seed.py``) rather than by the daemon's catch-up, which reads
every event back. The same is done at a tenth of the events first, so that the
growth from one size to the next is measured, not assumed: latency and size
at a size this run could not reach are extrapolated from it (the report says
which figures are).

At each size, a daemon is started on a copy of the store and index, and one
client times bare pings (the in-run baseline), a search for a word in no
message, and one for a word in every message (it ranks them all); then, with
the daemon stopped, the indexing work of a turn is timed on that full index.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import _search, _seed
from bench._daemon import BenchDaemon
from bench._index_seed import seed_index
from bench._sizes import Sizes
from copilotd.search import INDEX_FILE_NAME

# The smaller size, as a fraction of the events of the full one.
SMALLER = 10


def _index_into(cache: Path, layout: _seed.Layout, data_dir: Path) -> dict[str, float]:
    """Seed the index once per seed cache, then copy it into ``data_dir``."""
    seeded = cache / "index"
    done = seeded / "seeded.json"
    figures: dict[str, float] = {}
    if not done.exists():
        seeded.mkdir(parents=True, exist_ok=True)
        figures = seed_index(seeded, layout)
        done.write_text(str(figures))
    for suffix in ("", "-wal", "-shm"):
        source = seeded / f"{INDEX_FILE_NAME}{suffix}"
        if source.exists():
            shutil.copyfile(source, data_dir / source.name)
    return figures


def _one_size(root: Path, cache: Path, sizes: Sizes, log: Callable[[str], None]) -> dict[str, Any]:
    layout, store_dir, _ = _seed.seeded(cache, sizes, log)
    seeding: dict[str, float] = {}

    def index(data_dir: Path) -> None:
        seeding.update(_index_into(cache, layout, data_dir))

    daemon = BenchDaemon(root, seeded_store=store_dir, seed_index=index).start()
    try:
        log(f"search-large: {layout.total_events:,} events: searches and pings")
        figures = _search.probe(daemon.socket, daemon.data_dir, pings=True)
    finally:
        daemon.stop()
    log(f"search-large: {layout.total_events:,} events: a turn's indexing on the full index")
    figures["turn_cost"] = _search.turn_cost(daemon.data_dir / INDEX_FILE_NAME)
    shutil.rmtree(root, ignore_errors=True)  # a copy of the store and index: gigabytes
    return {
        "sessions": layout.total_sessions,
        "events": layout.total_events,
        "index_rows": seeding.get("rows"),
        "index_seed_seconds": seeding.get("seconds"),
        "store_seed_seconds": layout.seconds.get("copilotd"),
        **figures,
    }


def bench_search_large(
    root: Path, sizes: Sizes, seed_cache: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    smaller = dataclasses.replace(sizes, events=sizes.events // SMALLER)
    runs: list[dict[str, Any]] = []
    for run_sizes, cache in (
        (smaller, seed_cache.with_name(f"{seed_cache.name}-tenth")),
        (sizes, seed_cache),
    ):
        began = time.monotonic()
        runs.append(_one_size(root / f"search{len(runs)}", cache, run_sizes, log))
        runs[-1]["seconds"] = time.monotonic() - began
    return {"runs": runs, "growth": growth(runs[0], runs[1])}


def growth(small: dict[str, Any], large: dict[str, Any]) -> dict[str, float]:
    """How each figure grew per event from the smaller size to the larger one."""
    events = large["events"] / small["events"]
    return {
        "events": events,
        "index_bytes": large["index_bytes"] / small["index_bytes"],
        "common_p50": large["common"]["p50_ms"] / small["common"]["p50_ms"],
        "rare_p50": large["rare"]["p50_ms"] / small["rare"]["p50_ms"],
    }
