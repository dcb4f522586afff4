"""Search on PostgreSQL next to the SQLite index, in one run on the same sessions.

Seeds identical histories into a PostgreSQL store (on a private cluster, as
the tests start one) and an LMDB store, builds the SQLite index from the LMDB
log with the daemon's own catch-up, then times the same queries against both
engines in process, interleaved (the SQLite index is the baseline: figures
are ratios to it). Also: each engine's index built from the log, its size,
and what indexing adds to a PostgreSQL turn's commit (the same appends with
the index's writes switched off, interleaved).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import psycopg

from bench._procs import latency_summary
from bench._report import _lat, table
from bench._sizes import Sizes
from copilotd import events as ev
from copilotd.search import INDEX_FILE_NAME, Indexer, SearchFilter
from copilotd.search.index import SNIPPET_TOKENS, search_index
from copilotd.search.postgres import tsquery_text
from copilotd.store import LmdbStore, SessionMetadata, StoreWriter, postgres_search
from copilotd.store.postgres_schema import SCHEMA
from copilotd.store.postgres_store import PostgresStore

# (sessions, turns per session) seeded per mode: the full size seeds in minutes.
SCALE: Final = {"full": (4_000, 25), "quick": (1_000, 20), "tiny": (40, 5)}
SEARCHES: Final = {"full": 30, "quick": 20, "tiny": 3}
TURNS_TIMED: Final = {"full": 300, "quick": 200, "tiny": 10}
SESSIONS_PER_BATCH: Final = 50
# Every message holds "considered"; each session one marker of its own.
QUERIES: Final = {
    "a word in no message": "xylophone",
    "a word in one session": "marker7",
    "a prefix (marker7*: 1 in 10 sessions)": "marker7*",
    "a phrase in every answer": '"considered answer"',
    "a word in every message": "considered",
}


def _messages(session: int, turn: int) -> list[ev.SessionEvent]:
    return [
        ev.make_event(
            ev.USER_MESSAGE,
            content=f"Tell me about the trade-offs of design {turn}, marker{session} please.",
        ),
        ev.make_event(
            ev.ASSISTANT_MESSAGE,
            content=f"Here is a considered answer about design {turn}, weighing both sides.",
        ),
    ]


Write = Callable[[list[Callable[[StoreWriter], Any]]], Any]


def _seed(write: Write, sessions: int, turns: int) -> None:
    for first in range(0, sessions, SESSIONS_PER_BATCH):
        batch: list[Callable[[StoreWriter], Any]] = []
        for number in range(first, min(first + SESSIONS_PER_BATCH, sessions)):
            events = [ev.make_event(ev.SESSION_START, model="offline")]
            for turn in range(turns):
                events += _messages(number, turn)
            metadata = SessionMetadata(session_id=f"session-{number}")
            batch.append(functools.partial(_create, metadata=metadata, events=events))
        write(batch)


def _create(
    writer: StoreWriter, *, metadata: SessionMetadata, events: list[ev.SessionEvent]
) -> object:
    return writer.create_session(metadata, events)


@contextmanager
def _cluster() -> Iterator[str]:
    from tests.support.postgres import start_cluster  # the tests' private server

    cluster = start_cluster()
    try:
        yield cluster.dsn(cluster.create_database())
    finally:
        cluster.stop()


def _time(call: Callable[[], object]) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def bench_search_pg(root: Path, sizes: Sizes) -> dict[str, Any]:
    sessions, turns = SCALE[sizes.name]
    searches = SEARCHES[sizes.name]
    results: dict[str, Any] = {"sessions": sessions, "events": sessions * (1 + 2 * turns)}
    lmdb_dir, data_dir = root / "search-pg-lmdb", root / "search-pg-data"
    data_dir.mkdir(parents=True)
    lmdb = LmdbStore.open(lmdb_dir)
    try:
        results["sqlite_seed_s"] = _time(lambda: _seed(lmdb.write_batch, sessions, turns))
        indexer = Indexer(lmdb, data_dir)
        results["sqlite_build_s"] = _time(lambda: asyncio.run(indexer.catch_up()))
        indexer.index.close()
        index_path = data_dir / INDEX_FILE_NAME
        results["sqlite_bytes"] = sum(
            path.stat().st_size for path in data_dir.iterdir() if path.name.startswith("search")
        )
    finally:
        lmdb.close()
    with _cluster() as dsn:
        store = PostgresStore.open(dsn, max_connections=2)
        try:
            results["pg_seed_s"] = _time(lambda: _seed(store.write_batch, sessions, turns))
            results["pg_build_s"] = _time(store.rebuild_search)
            with psycopg.connect(dsn, autocommit=True) as connection:
                connection.execute(f"VACUUM ANALYZE {SCHEMA}.search_entries")
                row = connection.execute(
                    "SELECT sum(pg_total_relation_size(c)) FROM unnest(%s::regclass[]) c",
                    ([f"{SCHEMA}.search_{t}" for t in ("entries", "spans", "cuts")],),
                ).fetchone()
            results["pg_bytes"] = int(row[0]) if row else 0
            results["queries"] = _queries(store, index_path, searches)
            results["turn"] = _turn_cost(store, TURNS_TIMED[sizes.name])
        finally:
            store.close()
    return results


def _pg_page(store: PostgresStore, tsquery: str) -> None:
    """A first page of 20, as the daemon asks for it (one more row: is there a next)."""
    store.search_text(
        tsquery,
        session_id_prefix="",
        since_ns=None,
        until_ns=None,
        include_rewound=False,
        limit=21,
        offset=0,
        snippet_words=SNIPPET_TOKENS,
    )


def _queries(store: PostgresStore, index_path: Path, searches: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, query in QUERIES.items():
        search = SearchFilter(query=query)
        tsquery = tsquery_text(query)
        sqlite_s, pg_s = [], []
        for _ in range(searches):  # interleaved: the machine's noise falls on both
            sqlite_s.append(
                _time(functools.partial(search_index, index_path, search, limit=21, offset=0))
            )
            pg_s.append(_time(functools.partial(_pg_page, store, tsquery)))
        figures[name] = {"sqlite": latency_summary(sqlite_s), "pg": latency_summary(pg_s)}
    return figures


def _no_entries(
    connection: psycopg.Connection[Any], log_number: int, events: Iterable[ev.SessionEvent]
) -> None:
    """In place of ``postgres_search.index_events``: the baseline writes no entries."""
    del connection, log_number, events


def _append_turn(store: PostgresStore, turn: int) -> None:
    session_id, messages = f"session-{turn % 10}", _messages(turn % 10, turn)
    store.write_batch([lambda writer: writer.append_events(session_id, messages)])


def _turn_cost(store: PostgresStore, turns: int) -> dict[str, Any]:
    """One turn's two messages appended, with and without the search entries written."""
    indexed: list[float] = []
    bare: list[float] = []
    write_entries = postgres_search.index_events
    for turn in range(turns):
        for seconds, switched_off in ((indexed, False), (bare, True)):
            if switched_off:
                postgres_search.index_events = _no_entries
            try:
                seconds.append(_time(functools.partial(_append_turn, store, turn)))
            finally:
                postgres_search.index_events = write_entries
    return {"indexed": latency_summary(indexed), "bare": latency_summary(bare)}


def search_pg_table(results: dict[str, Any]) -> str:
    found = results.get("search_pg")
    if not found:
        return ""
    rows = [
        [
            f"search: {name}",
            _lat(figures["sqlite"]),
            _lat(figures["pg"]),
            f"{figures['pg']['p50_ms'] / max(figures['sqlite']['p50_ms'], 1e-9):.2f}",
        ]
        for name, figures in found["queries"].items()
    ]
    rows.append(
        [
            "index built from the log",
            f"{found['sqlite_build_s']:.1f} s",
            f"{found['pg_build_s']:.1f} s",
            f"{found['pg_build_s'] / max(found['sqlite_build_s'], 1e-9):.2f}",
        ]
    )
    rows.append(
        [
            "index size",
            f"{found['sqlite_bytes'] / 1e6:.0f} MB",
            f"{found['pg_bytes'] / 1e6:.0f} MB",
            f"{found['pg_bytes'] / max(found['sqlite_bytes'], 1):.2f}",
        ]
    )
    turn = found["turn"]
    rows.append(
        [
            "a turn's append on PostgreSQL, without / with its entries",
            _lat(turn["bare"]),
            _lat(turn["indexed"]),
            f"{turn['indexed']['p50_ms'] / max(turn['bare']['p50_ms'], 1e-9):.2f}",
        ]
    )
    title = (
        f"Search on PostgreSQL vs the SQLite index ({found['sessions']:,} sessions / "
        f"{found['events']:,} events)\n\n"
    )
    return title + table(["what", "SQLite (baseline)", "PostgreSQL", "ratio p50"], rows)
