"""Reading a session's history through the client writes nothing.

``client.get_messages(session_id)`` reads without resuming: the session's log,
its last activity (what age-based retention looks at) and its ordering in
``list_sessions`` stay as they were, unlike ``resume_session``.
"""

from __future__ import annotations

import pytest

from copilot_client import CopilotClient, SessionEventType, SessionNotFoundError
from tests.support.daemon_process import DaemonProcess
from tests.support.session_events import TURN, types

T = SessionEventType


async def test_get_messages_by_id_reads_without_writing(daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        older = await client.create_session(session_id="older")
        await older.send_and_wait("Remember this")
        await client.create_session(session_id="newer")
        before = await client.get_session_metadata("older")
        assert before is not None

        history = await client.get_messages("older")
        assert types(history) == [T.SESSION_START, *TURN]
        assert history[1].data.content == "Remember this"
        assert [e.sequence for e in await client.get_messages("older", after_sequence=2)] == [
            3,
            4,
            5,
        ]
        assert len(await client.get_messages("older", limit=2)) == 2

        after = await client.get_session_metadata("older")
        assert after == before  # same last sequence, same modified time
        assert [s.session_id for s in await client.list_sessions()] == ["newer", "older"]

        # What resume does, for contrast: it records and makes the session recent.
        await client.resume_session("older")
        assert [s.session_id for s in await client.list_sessions()] == ["older", "newer"]

        with pytest.raises(SessionNotFoundError):
            await client.get_messages("never-created")
