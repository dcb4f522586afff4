"""A turn under way when the disk fills: it still ends, and the session goes on once there is room.

A real daemon on a real 4 MiB tmpfs (root only, else skipped with the
reason) answers through ``FakeModelServer``, which holds the answer after
its first chunk while the test fills the disk. The answer (600 KB) cannot be
stored then; the turn must end anyway (a short end saying so, retried until
there is room), report no running turn afterwards, and leave no half turn
for the next one to bury in the history.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from copilot_client import CopilotClient, SessionEventType, SessionFailedError
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import FakeModelServer, Reply
from tests.support.full_store import (
    Written,
    connect,
    fill_disk,
    resume_until_not_recorded,
    write_until_refused,
)
from tests.support.store_check import check_store

T = SessionEventType
LONG_ANSWER = "y" * 600_000


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as running:
        yield running


async def test_a_turn_ending_on_a_full_disk_ends_and_the_session_goes_on(
    short_tmp: Path, small_disk: Path, server: FakeModelServer
) -> None:
    config = short_tmp / "config.toml"
    config.write_text(
        f"""
[models]
default = "gpt-test"

[providers.openai]
type = "openai"
base_url = "{server.url}/v1"
max_retries = 0
models = ["gpt-test"]
"""
    )
    daemon = DaemonProcess(short_tmp, ["--config", str(config)])
    daemon.data_dir = small_disk / "data"
    daemon.start()
    gate = threading.Event()
    server.script(Reply(chunks=("Start ", LONG_ANSWER), gate=gate))
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            await client.create_session(session_id="other")
            session = await client.create_session(session_id="busy")
            waiting = asyncio.create_task(session.send_and_wait("Tell me a lot", timeout=120))
            await server.wait_for_async(lambda requests: bool(requests and requests[0].chunks_sent))

            # A reader of the store pins the pages freed from now on, as a
            # long read would: once the older free pages are used up, every
            # commit needs new ones, which a full disk cannot give.
            reader = lmdb.open(str(daemon.data_dir / "store"), readonly=True, max_dbs=16)
            pinned = reader.begin()
            filler = small_disk / "filler"
            fill_disk(filler)
            # Small writes, then tiny ones, take the store's free pages too, so
            # that even a short end has no room.
            async with connect(daemon) as stub:
                await write_until_refused(stub, "top", Written(), prompt="z" * 512)
                await resume_until_not_recorded(stub, "other")
            gate.set()
            # The turn cannot end with its answer, nor even with a short end: it waits for room.
            await asyncio.to_thread(daemon.wait_for_output, "could not be stored")
            await asyncio.to_thread(daemon.wait_for_output, "cannot end")
            assert not waiting.done()  # the session is still busy with the turn
            pinned.abort()
            reader.close()
            filler.unlink()
            with pytest.raises(SessionFailedError) as failed:
                await waiting
            event = failed.value.event
            assert event.data.error_type == "store_full"
            assert "could not be stored" in (event.data.message or "")

            listed = {m.session_id: m for m in await client.list_sessions()}
            assert listed["busy"].turn_running is False
            history = [e.type for e in await session.get_messages()]
            assert history[1:] == [
                T.USER_MESSAGE,
                T.ASSISTANT_TURN_START,
                T.SESSION_ERROR,
                T.ASSISTANT_TURN_END,
            ]
            answer = await session.send_and_wait("Shorter, please", timeout=60)
            assert answer is not None and answer.data.content == server.default_text
        assert daemon.terminate() == 0
    finally:
        daemon.kill()
    report = check_store(daemon.data_dir)  # every turn ended, none in the middle left open
    assert report.open_turns == {}
    ends = report.sessions["busy"].turn_ends
    assert len(ends) == 2
    retries = next(line for line in daemon.output if "ended after" in line)
    print(f"\nFIGURES full disk mid-turn: {retries.split('session busy ')[-1]}")
