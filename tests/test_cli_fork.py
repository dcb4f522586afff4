"""``copilotd sessions fork`` and ``sessions rewind``, and the export of a fork, against a
real daemon (its offline model answers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from copilot_client import CopilotClient, SessionEvent, SessionEventType, SessionMetadata
from copilotd import events as ev
from copilotd.admin.export_format import ExportWriter
from tests.support.cli import MadeSession, copilotd, made_history, ok, one_line_error
from tests.support.daemon_process import DaemonProcess

T = SessionEventType


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        yield client


async def metadata_of(client: CopilotClient, session_id: str) -> SessionMetadata:
    (found,) = [m for m in await client.list_sessions() if m.session_id == session_id]
    return found


def sequences(events: list[SessionEvent], kind: SessionEventType) -> list[int]:
    return [e.sequence for e in events if e.type is kind]


async def test_fork_and_rewind_on_the_command_line(
    daemon: DaemonProcess, client: CopilotClient
) -> None:
    session = await client.create_session(session_id="p")
    await session.send_and_wait("first")
    await session.send_and_wait("second")
    events = await session.get_messages()
    first_end = sequences(events, T.ASSISTANT_TURN_END)[0]

    assert ok(copilotd(daemon, "sessions", "fork", "p", "--id", "f", "--at", str(first_end))) == (
        f"forked p at {first_end} as f\n"
    )
    fork = await metadata_of(client, "f")
    assert (fork.parent_session_id, fork.fork_sequence) == ("p", first_end)
    inside = sequences(events, T.USER_MESSAGE)[1]
    line = one_line_error(copilotd(daemon, "sessions", "fork", "p", "--at", str(inside)))
    assert "inside a turn" in line and "--at SEQ" in line
    line = one_line_error(copilotd(daemon, "sessions", "fork", "p", "--id", "f"))
    assert "already exists" in line

    last = events[-1].sequence
    report = ok(copilotd(daemon, "sessions", "rewind", "p", str(first_end)))
    assert report == (
        f"rewound p to {first_end}: cut {last - first_end} events "
        f"({first_end + 1}-{last}), kept in the log\n"
    )
    line = one_line_error(copilotd(daemon, "sessions", "rewind", "p", str(first_end + 1)))
    assert "cut by a rewind" in line and "SEQ" in line
    shown = ok(copilotd(daemon, "sessions", "show", "p"))
    assert "second" not in shown and "rewound:" in shown
    assert "second" in ok(copilotd(daemon, "sessions", "show", "p", "--include-rewound"))


async def test_an_exported_fork_imports_as_a_standalone_session(
    daemon: DaemonProcess, client: CopilotClient, tmp_path: Path
) -> None:
    parent = await client.create_session(session_id="p")
    await parent.send_and_wait("inherited words")
    await client.fork_session("p", "f")
    fork = await client.resume_session("f")
    await fork.send_and_wait("own words")
    end = sequences(await fork.get_messages(), T.ASSISTANT_TURN_END)[-1]
    await fork.send_and_wait("rewound words")
    await fork.rewind(end)
    everything = await fork.get_messages(include_rewound=True)
    visible = await fork.get_messages()

    export = tmp_path / "fork.jsonl"
    ok(copilotd(daemon, "export", "f", "-o", str(export)))
    ok(copilotd(daemon, "sessions", "delete", "--yes", "f", "p"))
    ok(copilotd(daemon, "import", str(export)))

    imported = await metadata_of(client, "f")
    assert (imported.parent_session_id, imported.fork_sequence) == (None, 0)
    assert imported.rewound_events == len(everything) - len(visible)
    again = await client.get_messages("f", include_rewound=True)
    assert [(e.id, e.sequence, e.type) for e in again] == [
        (e.id, e.sequence, e.type) for e in everything
    ]
    assert [e.id for e in await client.get_messages("f")] == [e.id for e in visible]
    contents = [e.data.content for e in await client.get_messages("f") if e.data.content]
    assert "inherited words" in contents and "rewound words" not in contents


def test_an_import_with_an_impossible_rewind_is_refused(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    metadata, events = made_history(MadeSession("bad", timedelta(hours=1)), datetime.now(UTC))
    rewind = ev.make_event(ev.SESSION_SNAPSHOT_REWIND, to_sequence=len(events) + 5)
    rewind.sequence, rewind.parent_id = len(events) + 1, events[-1].id
    rewind.timestamp.CopyFrom(events[-1].timestamp)
    path = tmp_path / "bad.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        writer = ExportWriter(handle, producer="tests")
        writer.begin()
        writer.session(metadata, len(events) + 1)
        for event in [*events, rewind]:
            writer.event("bad", event)
        writer.end()
    line = one_line_error(copilotd(daemon, "import", str(path)))
    assert "session.snapshot_rewind" in line and "to_sequence" in line
