"""Fork cost: ``ForkSession`` on a session of 10 events and on one of 100,000.

A fork refers to its parent's log instead of copying it, so both should cost
the same; the table gives both latencies, their ratio, and a bare ping on the
same socket as the baseline of the run. The search index holds each session's
visible history, so a fork's inherited events are indexed after it, in the
background: each fork is followed (untimed) by a search, which waits for
that indexing, and its time is reported apart as what the fork costs the
indexer (it grows with the history, and never holds up the fork itself).
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path
from typing import Any, Final

from bench._daemon import BenchDaemon
from bench._procs import latency_summary
from bench._report import _lat, table
from bench._sizes import Sizes
from copilot_client import CopilotClient
from copilotd import events as ev
from copilotd.store import LmdbStore, SessionRecord, StoreWriter

SMALL_EVENTS: Final = 10
LARGE_EVENTS: Final = 100_000
FORKS: Final = {"full": 30, "quick": 20, "tiny": 3}
# Events written per transaction while seeding.
SEED_BATCH: Final = 2_000


def _turn(number: int) -> list[ev.SessionEvent]:
    turn_id = f"turn-{number}"
    return [
        ev.make_event(ev.USER_MESSAGE, content=f"question {number} about forks"),
        ev.make_event(ev.ASSISTANT_TURN_START, turn_id=turn_id),
        ev.make_event(ev.ASSISTANT_MESSAGE, content=f"answer {number}", turn_id=turn_id),
        ev.make_event(ev.ASSISTANT_TURN_END, turn_id=turn_id),
    ]


def _history(count: int) -> list[ev.SessionEvent]:
    """``count`` events of whole turns (a session.start, turns, resumes to fill up)."""
    events = [ev.make_event(ev.SESSION_START, model="offline")]
    number = 0
    while len(events) + 4 <= count:
        events += _turn(number)
        number += 1
    while len(events) < count:
        events.append(ev.make_event(ev.SESSION_RESUME))
    return events


def seed(store_dir: Path, sizes: dict[str, int]) -> None:
    store = LmdbStore.open(store_dir)
    try:
        for session_id, count in sizes.items():
            _seed_session(store, session_id, _history(count))
    finally:
        store.close()


def _seed_session(store: LmdbStore, session_id: str, events: list[ev.SessionEvent]) -> None:
    metadata = ev.SessionMetadata(session_id=session_id, model="offline")
    store.write_batch([lambda writer: writer.create_session(metadata, events[:1])])
    for start in range(1, len(events), SEED_BATCH):
        part = events[start : start + SEED_BATCH]
        store.write_batch([functools.partial(_append, session_id=session_id, events=part)])


def _append(
    writer: StoreWriter, *, session_id: str, events: list[ev.SessionEvent]
) -> tuple[SessionRecord, list[ev.SessionEvent]]:
    return writer.append_events(session_id, events)


async def _measure(socket: str, sizes: dict[str, int], forks: int) -> dict[str, Any]:
    async with CopilotClient(socket_path=socket, auto_start=False) as client:
        latencies: dict[str, list[float]] = {name: [] for name in sizes}
        indexing: dict[str, list[float]] = {name: [] for name in sizes}
        pings: list[float] = []
        for number in range(forks):
            for name in sizes:  # interleaved, so that drift hits both alike
                began = time.perf_counter()
                await client.ping()
                pings.append(time.perf_counter() - began)
                began = time.perf_counter()
                await client.fork_session(name, f"{name}-fork-{number}")
                forked = time.perf_counter()
                latencies[name].append(forked - began)
                await client.search_sessions("forks", session_id_prefix=f"{name}-fork-{number}")
                indexing[name].append(time.perf_counter() - forked)
        figures: dict[str, Any] = {
            name: latency_summary(seconds) for name, seconds in latencies.items()
        }
        figures["ping"] = latency_summary(pings)
        figures["indexing"] = {name: latency_summary(s) for name, s in indexing.items()}
        return figures


def bench_fork(root: Path, sizes: Sizes) -> dict[str, Any]:
    events = {"small": SMALL_EVENTS, "large": LARGE_EVENTS if sizes.name != "tiny" else 1_000}
    seeded = root / "fork-seed"
    seed(seeded, events)
    daemon = BenchDaemon(root / "fork", seeded_store=seeded).start()
    try:
        figures = asyncio.run(_measure(daemon.socket, events, FORKS.get(sizes.name, 10)))
    finally:
        daemon.stop()
    figures["events"] = events
    figures["ratio"] = figures["large"]["p50_ms"] / figures["small"]["p50_ms"]
    return figures


def fork_table(results: dict[str, Any]) -> str:
    fork = results.get("fork")
    if not fork:
        return ""
    small, large = fork["events"]["small"], fork["events"]["large"]
    rows = [
        [f"fork a session of {small:,} events", _lat(fork["small"])],
        [f"fork a session of {large:,} events", _lat(fork["large"])],
        [f"ratio {large:,} / {small:,} (p50)", f"{fork['ratio']:.2f}"],
        ["bare ping on the same socket (baseline)", _lat(fork["ping"])],
        [f"search index catch-up after a fork of {small:,}", _lat(fork["indexing"]["small"])],
        [f"search index catch-up after a fork of {large:,}", _lat(fork["indexing"]["large"])],
    ]
    return table(["fork cost at 10 vs 100,000 events", "latency"], rows)
