"""Search figures: building the index from the seeded log, its size, search
latency, and the indexing work a turn adds to the daemon."""

from __future__ import annotations

import asyncio
import functools
import math
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from bench._procs import latency_summary
from bench._seed import ASSISTANT_TEXT, USER_TEXT
from copilot_client import CopilotClient
from copilotd import events as ev
from copilotd.search import INDEX_FILE_NAME, Indexer
from copilotd.search.index import SearchIndex
from copilotd.store import open_store

# Every seeded message holds "trade-offs" or "considered": a search for either
# ranks a match in every session; a word in none shows the index's own cost.
COMMON_QUERY: Final = "considered"
RARE_QUERY: Final = "xylophone"
# Searches timed per query: a common word at 10 million events takes seconds.
COMMON_SEARCHES: Final = 5
RARE_SEARCHES: Final = 100
TURNS_INDEXED: Final = 2_000


def index_bytes(data_dir: Path) -> int:
    return sum(
        path.stat().st_size
        for suffix in ("", "-wal", "-shm")
        if (path := data_dir / f"{INDEX_FILE_NAME}{suffix}").exists()
    )


def build_index(store_dir: Path, data_dir: Path) -> float:
    """Index a seeded store (before its daemon starts) with the daemon's own catch-up;
    returns the seconds it took. Done here rather than by the daemon at start so that
    the daemon's latency and memory figures are those of an indexed store."""
    store = open_store("lmdb", store_dir)
    try:
        indexer = Indexer(store, data_dir)
        try:
            began = time.perf_counter()
            asyncio.run(indexer.catch_up())
            return time.perf_counter() - began
        finally:
            indexer.index.close()
    finally:
        store.close()


async def _probe(socket: str, pings: bool) -> dict[str, Any]:
    async with CopilotClient(socket_path=socket, auto_start=False) as client:
        figures: dict[str, Any] = {}

        hits: dict[str, int] = {}

        async def search(query: str) -> None:
            page = await client.search_sessions(query, page_size=20, timeout=math.inf)
            hits[query] = len(page.hits)

        kinds: list[tuple[str, Callable[[], Awaitable[object]], int]] = [
            ("rare", functools.partial(search, RARE_QUERY), RARE_SEARCHES),
            ("common", functools.partial(search, COMMON_QUERY), COMMON_SEARCHES),
        ]
        if pings:  # the in-run baseline: the same socket, an empty call
            kinds.insert(0, ("ping", client.ping, RARE_SEARCHES))
        for name, operation, count in kinds:
            seconds = []
            for _ in range(count):
                began = time.perf_counter()
                await operation()
                seconds.append(time.perf_counter() - began)
            figures[name] = latency_summary(seconds)
        # What the first page held: a search that finds nothing is no figure.
        figures["hits"] = {"rare": hits[RARE_QUERY], "common": hits[COMMON_QUERY]}
        return figures


def probe(socket: str, data_dir: Path, *, pings: bool = False) -> dict[str, Any]:
    """Against a daemon started on the seeded store and its index (``pings``: time
    bare pings on the same socket first)."""
    figures = asyncio.run(_probe(socket, pings))
    figures["index_bytes"] = index_bytes(data_dir)
    return figures


def _turn_events(turn: int, sequence: int) -> list[ev.SessionEvent]:
    """The persisted events of one turn, as the core publishes them."""
    turn_id = f"turn-{turn}"
    events = [
        ev.make_event(ev.USER_MESSAGE, content=USER_TEXT),
        ev.make_event(ev.ASSISTANT_TURN_START, turn_id=turn_id),
        ev.make_event(ev.ASSISTANT_MESSAGE, content=ASSISTANT_TEXT, turn_id=turn_id),
        ev.make_event(ev.ASSISTANT_USAGE, input_tokens=100, output_tokens=50),
        ev.make_event(ev.ASSISTANT_TURN_END, turn_id=turn_id),
    ]
    for offset, event in enumerate(events, start=1):
        event.sequence = sequence + offset
    return events


def turn_cost(path: Path | None = None) -> dict[str, Any]:
    """The indexer's work per turn (one SQLite transaction on the daemon's event loop):
    what the index adds to a turn, to set beside a turn's latency. On the index at
    ``path`` (it gains the turns), or on a new empty one."""
    with tempfile.TemporaryDirectory(prefix="cpd-search-bench") as folder:
        index = SearchIndex(path or Path(folder) / INDEX_FILE_NAME)
        try:
            seconds = []
            sequence = 0
            for turn in range(TURNS_INDEXED):
                events = _turn_events(turn, sequence)
                sequence = events[-1].sequence
                session_id = f"session-{turn % 50}"
                began = time.perf_counter()
                if index.cursor(session_id) < events[0].sequence:  # as the indexer checks
                    index.add(session_id, events, sequence)
                seconds.append(time.perf_counter() - began)
        finally:
            index.close()
    return {"turns": TURNS_INDEXED, **latency_summary(seconds)}
