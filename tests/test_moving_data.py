"""Moving sessions between store backends with ``copilotd export --all`` and
``copilotd import``, between real daemons: from an LMDB daemon into a
PostgreSQL one, and back into a fresh LMDB one, with every history identical
(ids, sequence numbers, parents, times, payloads) and the metadata too."""

from __future__ import annotations

from pathlib import Path

from copilot_client import CopilotClient
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import events_pb2
from copilotd.cli.main import STORE_DSN_ENV
from tests.support.cli import copilotd, ok
from tests.support.daemon_process import DaemonProcess
from tests.support.full_store import connect
from tests.support.postgres import PostgresCluster

WAIT = 60.0
Histories = dict[str, tuple[pb.SessionMetadata, list[events_pb2.SessionEvent]]]


async def histories(daemon: DaemonProcess) -> Histories:
    """Every session the daemon serves: its metadata and all its events."""
    async with connect(daemon) as stub:
        listed = await stub.ListSessions(pb.ListSessionsRequest(page_size=1000), timeout=WAIT)
        found: Histories = {}
        for summary in listed.sessions:
            session_id = summary.session_id
            metadata = await stub.GetSession(pb.GetSessionRequest(session_id=session_id))
            events = await stub.ListEvents(
                pb.ListEventsRequest(session_id=session_id, page_size=1000), timeout=WAIT
            )
            found[session_id] = (metadata.session, list(events.events))
    return found


def client_of(daemon: DaemonProcess) -> CopilotClient:
    return CopilotClient(socket_path=daemon.socket_path, auto_start=False, timeout=WAIT)


def moved(daemon: DaemonProcess, export: Path) -> None:
    """Imports ``export`` into ``daemon`` with the command a user runs, checking its report."""
    report = ok(copilotd(daemon, "import", str(export)))
    assert report.count("imported ") == 2, report


async def test_export_all_moves_lmdb_to_postgresql_and_back(
    short_tmp: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    dsn = postgres_cluster.dsn(postgres_database)
    first_lmdb = DaemonProcess(short_tmp / "lmdb").start()
    try:
        async with client_of(first_lmdb) as client:
            talked = await client.create_session(session_id="talked")
            for prompt in ("first", "second"):
                await talked.send_and_wait(prompt, timeout=WAIT)
            pinned = await client.create_session(
                session_id="pinned", system_message={"content": "Be brief.", "mode": "replace"}
            )
            await pinned.send_and_wait("keep me", timeout=WAIT)
            await client.pin_session("pinned")
        on_lmdb = await histories(first_lmdb)
        ok(copilotd(first_lmdb, "export", "--all", "-o", str(short_tmp / "from-lmdb.jsonl")))
    finally:
        first_lmdb.terminate()
    assert sorted(on_lmdb) == ["pinned", "talked"]

    postgres = DaemonProcess(short_tmp / "pg", extra_env={STORE_DSN_ENV: dsn}).start()
    try:
        moved(postgres, short_tmp / "from-lmdb.jsonl")
        assert await histories(postgres) == on_lmdb
        # The moved sessions are alive there: a turn goes on with the old context.
        async with client_of(postgres) as client:
            talked = await client.resume_session("talked")
            answer = await talked.send_and_wait("third", timeout=WAIT)
            assert answer is not None and '"first"' in (answer.data.content or "")
        on_postgres = await histories(postgres)
        ok(copilotd(postgres, "export", "--all", "-o", str(short_tmp / "from-pg.jsonl")))
    finally:
        postgres.terminate()
    assert len(on_postgres["talked"][1]) > len(on_lmdb["talked"][1])

    second_lmdb = DaemonProcess(short_tmp / "lmdb-again").start()
    try:
        moved(second_lmdb, short_tmp / "from-pg.jsonl")
        assert await histories(second_lmdb) == on_postgres
    finally:
        second_lmdb.terminate()
