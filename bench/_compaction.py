"""Compaction figures, in-process on a real LMDB store: what a compaction saves and
costs the daemon besides its model calls.

* loading a long session's model context (``ContextWindow.load``, what the
  first turn after a restart does) with a compaction near its end, beside
  the same session without one: the load stops at the summary's range;
* the daemon's own work for one compaction of a full context window (choosing
  the range, the transcript, the chunks), to set beside a turn's latency.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Final

from bench._procs import latency_summary
from bench._seed import ASSISTANT_TEXT, USER_TEXT
from copilotd import events as ev
from copilotd.sessions.compaction import DEFAULT_CHUNK_TOKENS, choose_cut, chunked, transcript
from copilotd.sessions.context_window import ContextWindow
from copilotd.store import LmdbStore, SessionMetadata

TURNS: Final = 20_000  # 60,000 events a session
LOADS: Final = 50
# Turns after the compaction's range in the compacted session.
KEPT_TURNS: Final = 2


def _seed(store: LmdbStore, session_id: str, compacted: bool) -> None:
    events: list[ev.SessionEvent] = []
    for _ in range(TURNS):
        events.append(ev.make_event(ev.USER_MESSAGE, content=USER_TEXT))
        events.append(ev.make_event(ev.ASSISTANT_MESSAGE, content=ASSISTANT_TEXT))
        events.append(ev.make_event(ev.ASSISTANT_TURN_END))
    if compacted:
        covered = (TURNS - KEPT_TURNS) * 3
        complete = ev.make_event(
            ev.SESSION_COMPACTION_COMPLETE,
            success=True,
            up_to_sequence=covered,
            summary_content="remember: the summary of it all\n" * 40,
        )
        events.insert(covered + 3, complete)  # written during the next turn, as in life
    (result,) = store.write_batch(
        [lambda w: w.create_session(SessionMetadata(session_id=session_id), events)]
    )
    if isinstance(result, Exception):
        raise result


def _timed(store: LmdbStore, session_id: str) -> tuple[dict[str, Any], ContextWindow]:
    seconds = []
    window = ContextWindow()
    for _ in range(LOADS):
        began = time.perf_counter()
        window = ContextWindow.load(store, session_id)
        seconds.append(time.perf_counter() - began)
    return latency_summary(seconds), window


def cost() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cpd-compaction-bench") as folder:
        store = LmdbStore.open(Path(folder) / "store")
        try:
            _seed(store, "plain", compacted=False)
            _seed(store, "compacted", compacted=True)
            plain, window = _timed(store, "plain")
            compacted, small = _timed(store, "compacted")
            work = []
            for _ in range(LOADS):
                began = time.perf_counter()
                messages = window.messages
                cut = choose_cut(messages)
                chunked(transcript(messages[:cut]), DEFAULT_CHUNK_TOKENS)
                work.append(time.perf_counter() - began)
        finally:
            store.close()
    return {
        "session_events": TURNS * 3,
        "plain_load": plain,
        "plain_messages": len(window.messages),
        "compacted_load": compacted,
        "compacted_messages": len(small.messages),
        "work": latency_summary(work),
    }
