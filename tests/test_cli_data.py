"""``copilotd export | import | backup | restore`` against a real daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from copilot_client import CopilotClient, SessionConfig
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc, events_pb2
from copilotd.store import LmdbStore
from tests.support.cli import copilotd, ok, one_line_error
from tests.support.daemon_process import DaemonProcess


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        yield client


@pytest.fixture
async def stub(daemon: DaemonProcess) -> AsyncIterator[copilot_pb2_grpc.CopilotServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield copilot_pb2_grpc.CopilotServiceStub(channel)


async def talk(client: CopilotClient, session_id: str, *prompts: str, **config: object) -> None:
    session = await client.create_session(SessionConfig(session_id=session_id, **config))  # type: ignore[arg-type]
    for prompt in prompts:
        await session.send_and_wait(prompt)
    await session.destroy()


async def history(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, session_id: str
) -> tuple[pb.SessionMetadata, list[events_pb2.SessionEvent]]:
    metadata = (await stub.GetSession(pb.GetSessionRequest(session_id=session_id))).session
    events = (
        await stub.ListEvents(pb.ListEventsRequest(session_id=session_id, page_size=1000))
    ).events
    return metadata, list(events)


async def ids(stub: copilot_pb2_grpc.CopilotServiceAsyncStub) -> list[str]:
    response = await stub.ListSessions(pb.ListSessionsRequest(page_size=1000))
    return sorted(s.session_id for s in response.sessions)


# -- export and import ------------------------------------------------------------------


async def test_export_delete_import_gives_identical_histories(
    daemon: DaemonProcess,
    client: CopilotClient,
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
    tmp_path: Path,
) -> None:
    await talk(client, "plain", "first", "second")
    await talk(
        client, "with-system", "hello", system_message={"content": "Be brief.", "mode": "replace"}
    )
    await talk(client, "pinned", "keep me")
    await client.pin_session("pinned")
    before = {session_id: await history(stub, session_id) for session_id in await ids(stub)}

    export = tmp_path / "all.jsonl"
    ok(copilotd(daemon, "export", "--all", "-o", str(export)))
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    assert lines[0]["kind"] == "copilotd-export" and lines[0]["format_version"] == 1
    assert [line["kind"] for line in lines].count("event") == sum(
        len(e) for _, e in before.values()
    )
    assert lines[-1] == {"kind": "end", "session_count": 3}

    ok(copilotd(daemon, "sessions", "delete", "--yes", *before))
    assert await ids(stub) == []
    report = ok(copilotd(daemon, "import", str(export)))
    assert report.count("imported ") == 3

    for session_id, (metadata, events) in before.items():
        after_metadata, after_events = await history(stub, session_id)
        assert after_events == events  # ids, sequence numbers, parents, times, payloads
        assert after_metadata == metadata  # times, summary, counters, model, system message, pin
    # The imported sessions are alive: a turn continues with the old context.
    session = await client.resume_session("plain")
    answer = await session.send_and_wait("third")
    assert answer is not None and '"first"' in (answer.data.content or "")


async def test_import_refuses_a_taken_id_unless_told(
    daemon: DaemonProcess,
    client: CopilotClient,
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
    tmp_path: Path,
) -> None:
    await talk(client, "a", "one")
    await talk(client, "b", "two")
    export = tmp_path / "ab.jsonl"
    ok(copilotd(daemon, "export", "a", "b", "-o", str(export)))
    _, exported_b = await history(stub, "b")
    ok(copilotd(daemon, "sessions", "delete", "--yes", "a"))
    session = await client.resume_session("b")  # b moves on after the export
    await session.send_and_wait("three")
    await session.destroy()

    line = one_line_error(copilotd(daemon, "import", str(export)))
    assert "session b already exists; nothing was imported" in line and "--rename" in line
    assert await ids(stub) == ["b"]  # not even a, which was free

    assert "renamed from b" in ok(copilotd(daemon, "import", "--rename", str(export)))
    assert await ids(stub) == ["a", "b", "b-imported"]
    _, renamed = await history(stub, "b-imported")
    assert renamed == exported_b

    report = ok(copilotd(daemon, "import", "--overwrite", str(export)))
    assert "imported b (5 events), replacing the existing session" in report
    _, overwritten = await history(stub, "b")
    assert overwritten == exported_b  # back to the exported state

    assert "exclude each other" in one_line_error(
        copilotd(daemon, "import", "--rename", "--overwrite", str(export))
    )


async def test_import_rejects_damaged_files(
    daemon: DaemonProcess,
    client: CopilotClient,
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
    tmp_path: Path,
) -> None:
    await talk(client, "a", "one", "two")
    export = tmp_path / "a.jsonl"
    ok(copilotd(daemon, "export", "a", "-o", str(export)))
    ok(copilotd(daemon, "sessions", "delete", "--yes", "a"))
    lines = export.read_text().splitlines(keepends=True)

    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("".join(lines[:-3]))
    assert "the file is truncated" in one_line_error(copilotd(daemon, "import", str(truncated)))

    newer = tmp_path / "newer.jsonl"
    newer.write_text(
        lines[0].replace('"format_version":1', '"format_version":2') + "".join(lines[1:])
    )
    line = one_line_error(copilotd(daemon, "import", str(newer)))
    assert "line 1: format version 2" in line and "upgrade copilotd" in line

    not_json = tmp_path / "garbage.jsonl"
    not_json.write_text("".join(lines[:2]) + "{oops\n" + "".join(lines[3:]))
    assert "garbage.jsonl line 3: not JSON" in one_line_error(
        copilotd(daemon, "import", str(not_json))
    )

    # A hole in the history passes the file's structure checks; the daemon refuses it.
    holed = tmp_path / "holed.jsonl"
    session_line = json.loads(lines[1])
    session_line["event_count"] -= 1
    holed.write_text(lines[0] + json.dumps(session_line) + "\n" + lines[2] + "".join(lines[4:]))
    line = one_line_error(copilotd(daemon, "import", str(holed)))
    assert "event 2: sequence 3 where 2 was expected" in line
    assert await ids(stub) == []  # nothing half-imported


async def test_an_export_taken_mid_turn_imports_with_the_turn_closed(
    short_tmp: Path, tmp_path: Path
) -> None:
    daemon = DaemonProcess(short_tmp, ["--offline-delay", "0.3"]).start()
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.create_session(session_id="busy")
            started = asyncio.Event()
            session.on(
                lambda event: (
                    started.set() if event.type_name == "assistant.message_delta" else None
                )
            )
            await session.send("a long answer please")
            await started.wait()  # the turn is running now
            export = tmp_path / "busy.jsonl"
            ok(copilotd(daemon, "export", "busy", "-o", str(export)))
            report = ok(copilotd(daemon, "import", "--rename", str(export)))
            assert "marked interrupted" in report
            metadata = await client.get_session_metadata("busy-imported")
            assert metadata is not None and not metadata.turn_running
            async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
                _, imported = await history(
                    copilot_pb2_grpc.CopilotServiceStub(channel), "busy-imported"
                )
            end = [e for e in imported if e.type == "assistant.turn_end"][-1]
            assert end.assistant_turn_end.message.startswith(
                "interrupted: the session was exported"
            )
    finally:
        daemon.kill()


def test_export_needs_ids_or_all(daemon: DaemonProcess, tmp_path: Path) -> None:
    assert "or pass --all" in one_line_error(copilotd(daemon, "export", "-o", str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()
    assert "no session with id 'nope'" in one_line_error(
        copilotd(daemon, "export", "nope", "-o", str(tmp_path / "x"))
    )
    assert not (tmp_path / "x").exists()  # no partial file left behind


def export_on_terminal(daemon: DaemonProcess, output: Path) -> tuple[int, bytes]:
    """Export with a terminal (a pty) as stderr; returns the exit code and what it showed."""
    controller, terminal = os.openpty()
    try:
        process = subprocess.run(
            [sys.executable, "-m", "copilotd", "export", "--all", "-o", str(output)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=daemon.env,
            timeout=60,
        )
        os.close(terminal)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal side is closed and drained
            while chunk := os.read(controller, 4096):
                shown += chunk
    finally:
        os.close(controller)
    return process.returncode, shown


async def test_progress_bar_only_on_a_terminal(
    daemon: DaemonProcess, client: CopilotClient, tmp_path: Path
) -> None:
    await talk(client, "a", "one")
    piped = copilotd(daemon, "export", "--all", "-o", "-")
    assert piped.returncode == 0
    assert piped.stderr == "exported 1 session(s), 5 events to -\n"  # nothing but the summary
    assert json.loads(piped.stdout.splitlines()[-1]) == {"kind": "end", "session_count": 1}

    code, shown = export_on_terminal(daemon, tmp_path / "t.jsonl")
    assert code == 0
    assert b"exporting" in shown and b"100%" in shown


# -- backup and restore -----------------------------------------------------------------


async def test_backup_under_write_load_holds_every_earlier_session(
    daemon: DaemonProcess,
    client: CopilotClient,
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
    tmp_path: Path,
) -> None:
    for number in range(20):
        await talk(client, f"before-{number}", f"message {number}")
    writes = 0
    stop, loaded = asyncio.Event(), asyncio.Event()

    async def writer(name: str) -> None:
        nonlocal writes
        number = 0
        while not stop.is_set():
            session = await client.create_session(session_id=f"{name}-{number}")
            await session.send_and_wait("more")
            await session.destroy()
            writes += 1
            number += 1
            if writes >= 3:
                loaded.set()

    writers = [asyncio.create_task(writer(f"during-{n}")) for n in range(3)]
    try:
        await loaded.wait()  # the load is on before the backup starts
        existing = {m.session_id: m.last_sequence for m in await client.list_sessions()}
        writes_at_start = writes
        backup = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "copilotd",
            "backup",
            str(tmp_path / "backup"),
            env=daemon.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await backup.communicate()
        writes_during = writes - writes_at_start
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert backup.returncode == 0, err.decode()
    assert writes_during > 0, "the backup did not run under load"
    assert out.decode().startswith("backed up ")
    assert (tmp_path / "backup").stat().st_mode & 0o777 == 0o700  # private, like the data
    assert (tmp_path / "backup" / "store" / "data.mdb").stat().st_mode & 0o777 == 0o600

    copy = LmdbStore.open(tmp_path / "backup" / "store")
    try:
        for session_id, last_sequence in existing.items():
            record = copy.get_session(session_id)
            assert record is not None, f"{session_id} missing from the backup"
            copied = copy.read_events(session_id, limit=10_000)
            assert len(copied) >= last_sequence
            _, live = await history(stub, session_id)
            assert copied == live[: len(copied)]  # a committed prefix of the real history
        assert copy.session_count() >= len(existing)
    finally:
        copy.close()


async def test_restore_refuses_a_served_data_dir_then_swaps_keeping_the_old(
    short_tmp: Path, tmp_path: Path
) -> None:
    daemon = DaemonProcess(short_tmp).start()
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            await talk(client, "in-backup", "saved")
            ok(copilotd(daemon, "backup", str(tmp_path / "b")))
            await talk(client, "after-backup", "not saved")
        line = one_line_error(copilotd(daemon, "restore", str(tmp_path / "b")))
        assert daemon.process is not None and f"pid {daemon.process.pid}" in line
        assert "stop it first" in line
        assert "non-empty" not in line
        assert "is not an empty folder" in one_line_error(
            copilotd(daemon, "backup", str(tmp_path / "b"))
        )
        assert daemon.terminate() == 0

        report = ok(copilotd(daemon, "restore", str(tmp_path / "b")))
        assert report.startswith(f"restored 1 session(s) from {tmp_path / 'b'}")
        kept = [p for p in daemon.data_dir.iterdir() if p.name.startswith("store.replaced-")]
        assert len(kept) == 1 and str(kept[0]) in report
        old = LmdbStore.open(kept[0])  # nothing lost: the replaced store is whole
        try:
            assert old.get_session("after-backup") is not None
        finally:
            old.close()

        daemon.start()
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            assert [m.session_id for m in await client.list_sessions()] == ["in-backup"]
            session = await client.resume_session("in-backup")
            answer = await session.send_and_wait("still there?")
            assert answer is not None and '"saved"' in (answer.data.content or "")
    finally:
        daemon.kill()


def test_restore_rejects_what_is_not_a_backup(short_tmp: Path, tmp_path: Path) -> None:
    stopped = DaemonProcess(short_tmp)
    (tmp_path / "empty").mkdir()
    assert "holds no copilotd backup" in one_line_error(
        copilotd(stopped, "restore", str(tmp_path / "empty"))
    )
    garbage = tmp_path / "garbage" / "store"
    garbage.mkdir(parents=True)
    (garbage / "data.mdb").write_bytes(b"not lmdb" * 1000)
    line = one_line_error(copilotd(stopped, "restore", str(tmp_path / "garbage")))
    assert "cannot be read" in line
    assert not (stopped.data_dir / "store").exists()  # nothing was swapped in
