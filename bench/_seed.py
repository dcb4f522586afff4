"""Filling both stores with the same history before anything is measured.

Ten million events through ten million RPCs would take longer than the whole
suite may, so copilotd's store is seeded directly, through ``LmdbStore`` and
``write_batch`` with big batches (the same code, records and indexes the
daemon writes), before a daemon is started on a copy of it. The baseline's
SQLite file gets the same sessions with the same number of items each, through
the SDK's own schema (created by ``SQLiteSession`` itself) and bulk inserts.

Seeded sessions hold turns: copilotd's a ``session.start`` and then
``user.message``, ``assistant.turn_start``, ``assistant.message``,
``assistant.turn_end`` in turn; the baseline's alternate user and assistant
items of the same sizes.
"""

from __future__ import annotations

import functools
import json
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench._sizes import Sizes
from copilotd import events as ev
from copilotd.store import LmdbStore, SessionEvent, SessionMetadata, StoreWriter

MODEL = "gpt-5"
USER_TEXT = "Tell me more about the trade-offs of this design, with an example please. " * 2
ASSISTANT_TEXT = "Here is a considered answer that weighs both sides of the question. " * 4
# Events written per durable transaction while seeding.
SEED_BATCH_EVENTS = 100_000
# Seeded sessions are one second apart, oldest first, ending a day ago.
SECOND_NS = 1_000_000_000
LAYOUT_FILE = "layout.json"


@dataclass(frozen=True)
class Layout:
    """Which sessions a seeded store holds.

    Attributes:
        resume_ids: for each resume size (as a string, for JSON), the ids of
            the sessions with that many events.
        filler_sessions: how many other sessions.
        filler_events: events in each of those.
        start_ns: when the first seeded session started (the others follow a
            second apart, ending a day before seeding); 0 in caches written
            before it was recorded, which are seeded again.
    """

    resume_ids: dict[str, list[str]]
    filler_sessions: int
    filler_events: int
    sizes_name: str = ""
    total_sessions: int = 0
    total_events: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    start_ns: int = 0

    def time_ns(self, number: int, position: int) -> int:
        """When the ``position``-th event of the ``number``-th seeded session happened."""
        return self.start_ns + number * SECOND_NS + position * 1000

    def sessions(self) -> Iterator[tuple[str, int]]:
        """(session id, event count) of every session, oldest first."""
        for size, ids in self.resume_ids.items():
            for session_id in ids:
                yield session_id, int(size)
        for index in range(self.filler_sessions):
            yield f"s{index:07d}", self.filler_events


def plan(sizes: Sizes) -> Layout:
    resume_ids: dict[str, list[str]] = {}
    used_sessions = used_events = 0
    for size in sizes.resume_sizes:
        pool = sizes.largest_pool if size == max(sizes.resume_sizes) else sizes.resume_pool
        resume_ids[str(size)] = [f"r{size}-{i}" for i in range(pool)]
        used_sessions += pool
        used_events += pool * size
    filler_sessions = max(0, sizes.sessions - used_sessions)
    filler_events = max(2, (sizes.events - used_events) // max(1, filler_sessions))
    return Layout(
        resume_ids=resume_ids,
        filler_sessions=filler_sessions,
        filler_events=filler_events,
        sizes_name=sizes.name,
        total_sessions=used_sessions + filler_sessions,
        total_events=used_events + filler_sessions * filler_events,
        start_ns=(time.time_ns() // SECOND_NS - 86_400 - filler_sessions - used_sessions)
        * SECOND_NS,
    )


def seeded(cache: Path, sizes: Sizes, log: Callable[[str], None]) -> tuple[Layout, Path, Path]:
    """The layout, LMDB store directory and SQLite file for ``sizes``, seeding them if needed.

    A cache directory that already holds a complete seed of the same layout
    is reused (seeding 10 million events twice takes minutes).
    """
    layout = plan(sizes)
    lmdb_dir, sqlite_file, layout_file = cache / "store", cache / "baseline.db", cache / LAYOUT_FILE
    if layout_file.exists():
        saved = Layout(**json.loads(layout_file.read_text()))
        if saved.start_ns and (saved.resume_ids, saved.filler_sessions, saved.filler_events) == (
            layout.resume_ids,
            layout.filler_sessions,
            layout.filler_events,
        ):
            log(f"reusing the seeded stores in {cache}")
            return saved, lmdb_dir, sqlite_file
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    seconds: dict[str, float] = {}
    started = time.monotonic()
    seed_lmdb(lmdb_dir, layout)
    seconds["copilotd"] = time.monotonic() - started
    log(f"seeded copilotd's store: {layout.total_events:,} events in {seconds['copilotd']:.0f} s")
    started = time.monotonic()
    seed_sqlite(sqlite_file, layout)
    seconds["baseline"] = time.monotonic() - started
    log(f"seeded the baseline's SQLite file in {seconds['baseline']:.0f} s")
    layout = Layout(**{**asdict(layout), "seconds": seconds})
    layout_file.write_text(json.dumps(asdict(layout)))
    return layout, lmdb_dir, sqlite_file


# copilotd


@functools.cache
def session_template(count: int) -> list[SessionEvent]:
    """Events of a session with ``count`` events (ids and times are set per session)."""
    events = [ev.make_event(ev.SESSION_START, session_id="", model=MODEL)]
    while len(events) < count:
        turn_id, user_id = ev.new_id(), ev.new_id()
        events.append(ev.make_event(ev.USER_MESSAGE, content=USER_TEXT))
        events[-1].id = user_id
        events.append(
            ev.make_event(ev.ASSISTANT_TURN_START, turn_id=turn_id, user_message_id=user_id)
        )
        events.append(
            ev.make_event(
                ev.ASSISTANT_MESSAGE,
                message_id=ev.new_id(),
                content=ASSISTANT_TEXT,
                turn_id=turn_id,
                user_message_id=user_id,
                model=MODEL,
            )
        )
        events.append(
            ev.make_event(
                ev.ASSISTANT_TURN_END,
                turn_id=turn_id,
                user_message_id=user_id,
                reason=ev.TurnEndReason.TURN_END_REASON_COMPLETED,
            )
        )
    return events[:count]


def session_events(
    layout: Layout, session_id: str, count: int, number: int
) -> tuple[SessionMetadata, list[SessionEvent]]:
    """The metadata and events of the ``number``-th seeded session, as a client would
    have created them (the events are shared templates: use them before the next call)."""
    events = session_template(count)
    events[0].session_start.session_id = session_id
    for position, event in enumerate(events):
        # Unique within the session, and as long as the daemon's uuid4 ids.
        event.id = f"{number:08x}-0000-4000-8000-{position:012x}"
        event.timestamp.FromNanoseconds(layout.time_ns(number, position))
    return SessionMetadata(session_id=session_id, model=MODEL), events


def _create(layout: Layout, session_id: str, count: int, number: int, writer: StoreWriter) -> None:
    writer.create_session(*session_events(layout, session_id, count, number))


def seed_lmdb(path: Path, layout: Layout) -> None:
    store = LmdbStore.open(path, initial_map_size=1 << 30)
    try:
        operations: list[Callable[[StoreWriter], None]] = []
        pending = 0
        for number, (session_id, count) in enumerate(layout.sessions()):
            operations.append(functools.partial(_create, layout, session_id, count, number))
            pending += count
            if pending >= SEED_BATCH_EVENTS:
                _write(store, operations)
                operations, pending = [], 0
        _write(store, operations)
    finally:
        store.close()


def _write(store: LmdbStore, operations: list[Callable[[StoreWriter], None]]) -> None:
    for result in store.write_batch(operations):
        if isinstance(result, Exception):
            raise result


# The baseline


def baseline_item(role: str) -> dict[str, Any]:
    return {"role": role, "content": USER_TEXT if role == "user" else ASSISTANT_TEXT}


def seed_sqlite(path: Path, layout: Layout) -> None:
    from bench._baseline import open_session  # the SDK creates its own schema

    open_session("schema", path).close()
    user = json.dumps(baseline_item("user"))
    assistant = json.dumps(baseline_item("assistant"))
    connection = sqlite3.connect(path)
    try:
        # Seeding only: durability is not what is measured here.
        connection.execute("PRAGMA synchronous=OFF")
        pending = 0
        for number, (session_id, count) in enumerate(layout.sessions()):
            stamp = time.strftime(
                "%Y-%m-%d %H:%M:%S", time.gmtime(layout.time_ns(number, 0) / SECOND_NS)
            )
            connection.execute(
                "INSERT INTO agent_sessions (session_id, created_at, updated_at) VALUES (?, ?, ?)",
                (session_id, stamp, stamp),
            )
            connection.executemany(
                "INSERT INTO agent_messages (session_id, message_data, created_at) "
                "VALUES (?, ?, ?)",
                ((session_id, user if i % 2 == 0 else assistant, stamp) for i in range(count)),
            )
            pending += count
            if pending >= SEED_BATCH_EVENTS:
                connection.commit()
                pending = 0
        connection.commit()
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
