"""Two real daemons on one PostgreSQL store compact a session one at a time: the
later one refuses while the other's compaction runs (its start has no complete),
and a daemon restarted after a SIGKILL mid-compaction is not blocked by its own
dead start. Both talk to one strict provider server, which holds the summary."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from copilot_client import (
    CompactionInProgressError,
    CopilotClient,
    CopilotSession,
    DaemonUnavailableError,
    SessionEventType,
)
from copilotd.cli.main import STORE_DSN_ENV
from copilotd.sessions.compaction import SUMMARIZER_INSTRUCTIONS
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import FakeModelServer, Reply, Request, stream
from tests.support.postgres import PostgresCluster

T = SessionEventType
FACT = "remember: the ferry leaves at seven"
WAIT = 60.0


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as running:
        yield running


@pytest.fixture
def two(
    short_tmp: Path,
    server: FakeModelServer,
    postgres_cluster: PostgresCluster,
    postgres_database: str,
) -> Iterator[list[DaemonProcess]]:
    config = short_tmp / "config.toml"
    config.write_text(
        f"""
[models]
default = "gpt-test"

[providers.fake]
type = "openai"
base_url = "{server.url}/v1"
max_retries = 0
models = ["gpt-test"]
"""
    )
    os.chmod(config, 0o600)
    dsn = postgres_cluster.dsn(postgres_database)
    daemons = [
        DaemonProcess(
            short_tmp / f"d{n}", ["--config", str(config)], extra_env={STORE_DSN_ENV: dsn}
        ).start()
        for n in range(2)
    ]
    yield daemons
    for daemon in daemons:
        daemon.kill()


def summaries(requests: list[Request]) -> int:
    return sum(str(r.messages[0]["content"]).startswith(SUMMARIZER_INSTRUCTIONS) for r in requests)


async def session_with_history(client: CopilotClient) -> CopilotSession:
    session = await client.create_session()
    for prompt in (FACT, "two", "three"):
        assert await session.send_and_wait(prompt, timeout=WAIT) is not None
    return session


@pytest.fixture
async def clients(two: list[DaemonProcess]) -> AsyncIterator[list[CopilotClient]]:
    first = CopilotClient(socket_path=two[0].socket_path, auto_start=False)
    second = CopilotClient(socket_path=two[1].socket_path, auto_start=False)
    async with first, second:
        yield [first, second]


async def test_two_daemons_asked_at_once_compact_once(
    clients: list[CopilotClient], server: FakeModelServer
) -> None:
    gate = threading.Event()
    server.script(*[stream("Fine.")] * 3, Reply(chunks=(FACT,), gate=gate))
    session = await session_with_history(clients[0])
    sid = session.session_id
    on_second = await clients[1].resume_session(sid)

    attempts = [
        asyncio.create_task(session.compact()),
        asyncio.create_task(on_second.compact()),
    ]
    # One summary request reaches the server and is held there; the other
    # daemon refuses without asking (it sees the first one's start), whichever
    # of the two came first.
    await server.wait_for_async(lambda rs: summaries(rs) == 1 and rs[-1].chunks_sent == 1)
    first_done, _ = await asyncio.wait(attempts, timeout=WAIT, return_when="FIRST_COMPLETED")
    (loser,) = first_done
    refused = loser.exception()
    assert isinstance(refused, CompactionInProgressError), refused
    assert "another daemon" in refused.message and "compact again" in refused.message
    gate.set()
    (winner,) = [task for task in attempts if task is not loser]
    done = await winner
    assert done.summary_content == FACT
    assert summaries(server.requests) == 1

    history = await session.get_messages()
    starts = [e for e in history if e.type is T.SESSION_COMPACTION_START]
    assert len(starts) == 1  # the refused one wrote nothing
    # Once the first has completed, the other daemon compacts in its turn.
    server.script(stream("Fine."), stream(FACT))
    assert await on_second.send_and_wait("four", timeout=WAIT) is not None
    again = await on_second.compact()
    assert again.from_sequence == done.up_to_sequence + 1


async def test_a_daemon_killed_mid_compaction_blocks_only_the_other_daemon(
    two: list[DaemonProcess], server: FakeModelServer
) -> None:
    gate = threading.Event()
    server.script(*[stream("Fine.")] * 3, Reply(chunks=(FACT,), gate=gate))
    async with CopilotClient(socket_path=two[0].socket_path, auto_start=False) as first:
        session = await session_with_history(first)
        sid = session.session_id
        compacting = asyncio.create_task(session.compact())
        await server.wait_for_async(lambda rs: summaries(rs) == 1 and rs[-1].chunks_sent == 1)
        two[0].kill()
        with pytest.raises(DaemonUnavailableError):
            await compacting
    gate.set()

    async with CopilotClient(socket_path=two[1].socket_path, auto_start=False) as second:
        on_second = await second.resume_session(sid)
        with pytest.raises(CompactionInProgressError):
            await on_second.compact()  # the dead start is recent: maybe still running
    two[0].start()  # the same host and data directory: the same daemon
    server.script(stream(FACT))
    async with CopilotClient(socket_path=two[0].socket_path, auto_start=False) as again:
        resumed = await again.resume_session(sid)
        result = await resumed.compact()
        assert result.summary_content == FACT and result.from_sequence == 1
