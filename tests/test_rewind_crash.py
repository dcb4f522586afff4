"""A rewind is crash-atomic: SIGKILL the daemon around a rewind, again and again, and
the session on disk is either rewound or not, never half (one commit).

Each round sends the rewind from another process (``copilotd sessions
rewind``) and kills the daemon at a different moment: before the command can
have connected, at moments spread over its run, and after it has returned.
The kill moments are fault injection, not synchronisation: the assertions
hold whatever the moment turns out to be.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from copilot_client import CopilotClient, SessionEventType
from copilotd.store import LmdbStore
from tests.support.cli import CLI_TIMEOUT
from tests.support.daemon_process import DaemonProcess
from tests.support.store_check import check_store, read_all_events

T = SessionEventType
# Seconds after launching the command: 0 is before it can have connected (a
# Python start takes longer); None is after it returned.
KILL_AFTER = [0.0, 0.15, 0.3, 0.45, 0.6, 0.8, None]


async def prepare(daemon: DaemonProcess, session_id: str) -> tuple[int, int]:
    """A session of two turns; returns its first turn's end and its last sequence."""
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(session_id=session_id)
        await session.send_and_wait("keep this")
        await session.send_and_wait("cut this")
        events = await session.get_messages()
    ends = [e.sequence for e in events if e.type is T.ASSISTANT_TURN_END]
    return ends[0], events[-1].sequence


def on_disk(data_dir: Path, session_id: str) -> tuple[list[tuple[int, int]], int, str]:
    """The session's rewound ranges, last sequence and last event type, from the files."""
    store = LmdbStore.open(data_dir / "store")
    try:
        record = store.get_session(session_id)
        assert record is not None
        last = read_all_events(store, session_id)[-1]
        return [(c.first, c.last) for c in record.rewound], record.metadata.last_sequence, last.type
    finally:
        store.close()


def rewind_and_kill(daemon: DaemonProcess, session_id: str, to: int, delay: float | None) -> None:
    """Rewind from another process and SIGKILL the daemon ``delay`` seconds later
    (None: once the command has returned)."""
    command = subprocess.Popen(
        [sys.executable, "-m", "copilotd", "sessions", "rewind", session_id, str(to)],
        env=daemon.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if delay is None:
        assert command.wait(CLI_TIMEOUT) == 0
    else:
        time.sleep(delay)  # the kill's moment (see the module docstring)
    daemon.kill()
    command.wait(CLI_TIMEOUT)


async def test_a_sigkill_around_a_rewind_leaves_it_whole_or_not_at_all(
    daemon: DaemonProcess,
) -> None:
    rounds = KILL_AFTER[:]
    random.Random(15).shuffle(rounds)
    outcomes = []
    for number, delay in enumerate(rounds):
        session_id = f"s{number}"
        end, last = await prepare(daemon, session_id)
        rewind_and_kill(daemon, session_id, end, delay)

        check_store(daemon.data_dir)  # whole, and its rewound ranges agree with its log
        rewound, sequence, kind = on_disk(daemon.data_dir, session_id)
        if rewound:
            assert (rewound, sequence, kind) == (
                [(end + 1, last)],
                last + 1,
                "session.snapshot_rewind",
            )
        else:
            assert sequence == last and kind == "assistant.turn_end"
        outcomes.append(bool(rewound))
        if delay == 0.0:
            assert not rewound
        if delay is None:
            assert rewound

        daemon.start()
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.resume_session(session_id)
            said = [e.data.content for e in await session.get_messages() if e.data.content]
            assert ("cut this" in said) is not bool(rewound)
            await session.send_and_wait("and now")  # the session goes on either way
    assert True in outcomes and False in outcomes
