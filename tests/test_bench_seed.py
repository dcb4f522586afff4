"""The benchmark's shortcuts write what the daemon would have written.

``python -m bench`` fills stores and search indexes directly (``COPY`` into
PostgreSQL, bulk inserts into the SQLite index) because going through the
daemon would take longer than a run may. Its figures are only worth
something if the result is the same data: these tests seed small layouts
both ways and compare them row by row.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import _pg, _search, _seed
from bench._index_seed import seed_index
from bench._pg_seed import seed_postgres
from bench._sizes import TINY
from copilotd.search import INDEX_FILE_NAME
from copilotd.store import StoreWriter
from copilotd.store.postgres_schema import SCHEMA
from copilotd.store.postgres_store import PostgresStore
from tests.support.postgres import PostgresCluster

LAYOUT = _seed.plan(dataclasses.replace(TINY, sessions=12, events=400))


def _rows(dsn: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as connection:
        return connection.execute(query).fetchall()


def _through_the_store(dsn: str, layout: _seed.Layout) -> None:
    """Each seeded session created by the store's own writer, as a daemon creates one."""
    store = PostgresStore.open(dsn)
    try:
        operations: list[Callable[[StoreWriter], None]] = [
            functools.partial(_seed._create, layout, session_id, count, number)
            for number, (session_id, count) in enumerate(layout.sessions())
        ]
        for result in store.write_batch(operations):
            assert not isinstance(result, Exception), result
    finally:
        store.close()


def test_copy_seeding_writes_the_rows_the_store_writes(postgres_cluster: PostgresCluster) -> None:
    copied = postgres_cluster.dsn(postgres_cluster.create_database())
    written = postgres_cluster.dsn(postgres_cluster.create_database())
    seed_postgres(copied, LAYOUT)
    _through_the_store(written, LAYOUT)
    for query in (
        f"SELECT * FROM {SCHEMA}.sessions ORDER BY session_id",
        f"SELECT * FROM {SCHEMA}.events ORDER BY log_number, sequence",
        f"SELECT * FROM {SCHEMA}.counters",
        f"SELECT last_value FROM {SCHEMA}.log_numbers",
    ):
        assert _rows(copied, query) == _rows(written, query), query
    assert len(_rows(copied, f"SELECT 1 FROM {SCHEMA}.events")) == LAYOUT.total_events
    # And a store opened on it lists and reads every session.
    store = PostgresStore.open(copied)
    try:
        assert store.session_count() == LAYOUT.total_sessions
        for session_id, count in LAYOUT.sessions():
            events = store.read_events(session_id, after=0, before=count + 1, limit=count + 1)
            assert [event.sequence for event in events] == list(range(1, count + 1))
    finally:
        store.close()


def test_the_postgres_layout_keeps_the_sessions_and_resume_sizes() -> None:
    layout = _pg.layout(TINY)
    lmdb = _seed.plan(TINY)
    assert layout.resume_ids == lmdb.resume_ids
    assert layout.total_sessions == lmdb.total_sessions
    assert layout.total_events == sum(count for _, count in layout.sessions())


def _index_rows(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(data_dir / INDEX_FILE_NAME)
    try:
        return {
            "entries": db.execute(
                "SELECT session_id, sequence, event_type, event_time_ns, rewound, texts.text"
                " FROM entries JOIN texts ON texts.rowid = entries.id ORDER BY session_id, sequence"
            ).fetchall(),
            "cursors": db.execute("SELECT * FROM cursors ORDER BY session_id").fetchall(),
        }
    finally:
        db.close()


def test_the_seeded_index_is_the_one_the_indexer_builds_from_the_store(tmp_path: Path) -> None:
    store_dir, built, seeded = tmp_path / "store", tmp_path / "built", tmp_path / "seeded"
    built.mkdir()
    seeded.mkdir()
    _seed.seed_lmdb(store_dir, LAYOUT)
    _search.build_index(store_dir, built)  # the daemon's own catch-up, from the log
    figures = seed_index(seeded, LAYOUT)
    expected = _index_rows(built)
    assert _index_rows(seeded) == expected
    assert figures["rows"] == len(expected["entries"]) > 0


def test_an_index_of_cursors_only_leaves_the_daemon_nothing_to_catch_up(tmp_path: Path) -> None:
    built, seeded = tmp_path / "built", tmp_path / "seeded"
    built.mkdir()
    seeded.mkdir()
    _seed.seed_lmdb(tmp_path / "store", LAYOUT)
    _search.build_index(tmp_path / "store", built)
    seed_index(seeded, LAYOUT, texts=False)
    rows = _index_rows(seeded)
    assert rows["cursors"] == _index_rows(built)["cursors"]
    assert rows["entries"] == []
