"""The baseline: the OpenAI Agents SDK's own ``SQLiteSession`` (``pip install '.[bench]'``).

Configured as its users get it, plus ``synchronous=FULL`` set explicitly:
the SDK turns on WAL itself (``SQLiteSession._configure_connection`` runs
``PRAGMA journal_mode=WAL`` on every connection it opens) but leaves
``synchronous`` at SQLite's build default. ``DurableSQLiteSession`` overrides
that one hook to run the SDK's version and then ``PRAGMA synchronous=FULL``,
so each commit is synced before ``add_items`` returns, as copilotd's are.
Everything else is the SDK's code: one transaction per ``add_items``, its
thread-local connections, its busy handling. Every process opens the file
itself.

A turn is ``add_items`` of a user and an assistant item of ~500 bytes each.
A resume is what a user of the SDK writes to pick a session up again: a
``SQLiteSession`` for the id, then ``get_items(limit=50)``. The SDK has no
listing call; listing is the query a user would write on its schema.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from agents import SQLiteSession

from bench._ours import ROUND_CALLS, prompt
from bench._procs import Timed, latency_summary, wait_at

LIST_FIRST_PAGE = (
    "SELECT session_id, created_at, updated_at FROM agent_sessions "
    "ORDER BY updated_at DESC, session_id DESC LIMIT 50"
)
LIST_ALL = (
    "SELECT session_id, created_at, updated_at FROM agent_sessions "
    "ORDER BY updated_at DESC, session_id DESC"
)


class DurableSQLiteSession(SQLiteSession):
    """``SQLiteSession`` with ``PRAGMA synchronous=FULL`` on each of its connections."""

    @staticmethod
    def _configure_connection(conn: sqlite3.Connection) -> None:
        SQLiteSession._configure_connection(conn)
        conn.execute("PRAGMA synchronous=FULL")


def open_session(session_id: str, path: Path | str) -> DurableSQLiteSession:
    return DurableSQLiteSession(session_id, str(path))


async def synchronous_setting(session: DurableSQLiteSession) -> int:
    """The ``synchronous`` pragma of the connection the session writes with (2 = FULL)."""

    def read() -> int:
        with session._locked_connection() as conn:
            return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    return await asyncio.to_thread(read)


def turn_items(size: int, tag: str) -> list[Any]:
    return [
        {"role": "user", "content": prompt(size, tag)},
        {"role": "assistant", "content": prompt(size, "answer")},
    ]


async def _probe(params: dict[str, Any], barrier: Barrier) -> Timed:
    path = params["path"]
    resume_ids: dict[str, list[str]] = params["resume_ids"]
    counters = {size: 0 for size in resume_ids}

    async def resume(size: str) -> None:
        counters[size] += 1
        ids = resume_ids[size]
        session = open_session(ids[counters[size] % len(ids)], path)
        try:
            await session.get_items(limit=50)
        finally:
            session.close()

    connection = sqlite3.connect(path)
    listed: list[int] = []

    async def query(sql: str) -> None:
        listed.append(len(connection.execute(sql).fetchall()))

    kinds: dict[str, Callable[[], Awaitable[object]]] = {
        **{f"resume_{size}": functools.partial(resume, size) for size in resume_ids},
        "list_first_page": lambda: query(LIST_FIRST_PAGE),
    }
    for operation in kinds.values():
        for _ in range(3):
            await operation()
    started = await asyncio.to_thread(wait_at, barrier)
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(max(1, params["calls"] // ROUND_CALLS)):
        for kind, operation in kinds.items():
            for _ in range(ROUND_CALLS):
                begin = time.monotonic()
                await operation()
                samples[kind].append(time.monotonic() - begin)
    listed.clear()
    samples["list_all"] = []
    for _ in range(params["full_listings"]):
        begin = time.monotonic()
        await query(LIST_ALL)
        samples["list_all"].append(time.monotonic() - begin)
    samples.update(await _history_reads(params))
    connection.close()
    timed = Timed(started=started, deadline=time.monotonic())
    timed.extra = {kind: latency_summary(values) for kind, values in samples.items()}
    timed.extra["listed_sessions"] = listed
    return timed


async def _history_reads(params: dict[str, Any]) -> dict[str, list[float]]:
    """``get_items()`` of a whole session: what the SDK's runner reads for every turn."""
    samples: dict[str, list[float]] = {}
    for size, ids in params["resume_ids"].items():
        samples[f"first_turn_{size}"] = []
        for session_id in ids[: params["first_turns"]]:
            session = open_session(session_id, params["path"])
            begin = time.monotonic()
            await session.get_items()
            samples[f"first_turn_{size}"].append(time.monotonic() - begin)
            session.close()
    return samples


def probe_worker(params: dict[str, Any], barrier: Barrier) -> Timed:
    return asyncio.run(_probe(params, barrier))
