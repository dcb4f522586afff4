"""Store faults against a real daemon: a size cap, a real full disk, damaged files.

* A size cap (``--max-store-bytes``): writes get RESOURCE_EXHAUSTED (reason
  STORE_FULL) while reads go on; deleting sessions frees room (LMDB reuses
  the freed pages, and a reserve of the cap keeps deletions and turn ends
  possible even when the store is full); raising the cap works too.
* A full disk: a small tmpfs as the data dir, filled by another file (needs
  root and ``mount``; skipped otherwise, with the reason).
* Damaged files: refused with a clear message and left byte for byte as
  they were; restored, they open with every session.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from copilot_client import CopilotClient, ResourceExhaustedError
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.config import ConfigError, ConfigFile
from copilotd.store.settings import max_store_bytes, parse_size
from tests.support.daemon_process import DaemonProcess
from tests.support.full_store import (
    PROMPT,
    Written,
    connect,
    fill_disk,
    resume_until_not_recorded,
    write_until_refused,
)
from tests.support.store_check import check_store
from tests.support.wire import read_response


def assert_store_full(error: grpc.aio.AioRpcError | None, cause: str) -> None:
    assert error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    trailers = dict(error.trailing_metadata() or ())
    assert trailers.get("copilot-error-reason") == "ERROR_REASON_STORE_FULL"
    assert cause in (error.details() or "")
    assert "nothing was written" in (error.details() or "")


async def assert_reads_work(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub, written: Written
) -> None:
    listed = await stub.ListSessions(pb.ListSessionsRequest(page_size=1000))
    assert set(written.messages) <= {s.session_id for s in listed.sessions}
    for session_id, message_ids in written.messages.items():
        page = await stub.ListEvents(pb.ListEventsRequest(session_id=session_id))
        assert [e.id for e in page.events if e.type == "user.message"] == message_ids
    some = next(iter(written.messages))
    stream = stub.StreamEvents(pb.StreamEventsRequest(session_id=some))
    first = await read_response(stream)
    assert first.events[0].type == "session.start"
    stream.cancel()


def assert_kept(data_dir: Path, written: Written) -> None:
    report = check_store(data_dir)
    assert report.open_turns == {}
    for session_id, message_ids in written.messages.items():
        assert report.sessions[session_id].user_message_ids == message_ids, session_id


async def test_size_cap_refuses_writes_keeps_reads_and_recovers(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp, ["--max-store-bytes", "1MiB"]).start()
    written, refill, more = Written(), Written(), Written()
    try:
        async with connect(daemon) as stub:
            await write_until_refused(stub, "fill", written)
            assert_store_full(written.refusal, "size cap of 1048576 bytes")
            assert len(written.messages) > 5
            # The client library says the same, with its exception.
            async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
                with pytest.raises(ResourceExhaustedError, match="Delete old sessions"):
                    session = await client.resume_session(next(iter(written.messages)))
                    await session.send(PROMPT)
            await assert_reads_work(stub, written)

            # Deleting sessions frees room for new writes, though the store is full.
            doomed = list(written.messages)[: len(written.messages) // 2]
            for session_id in doomed:
                await stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id))
                del written.messages[session_id]
            await write_until_refused(stub, "refill", refill)
            assert len(refill.messages) >= len(doomed) // 2
            assert_store_full(refill.refusal, "size cap")
            written.messages.update(refill.messages)
        assert daemon.terminate() == 0
        assert_kept(daemon.data_dir, written)

        # A raised cap takes effect at the next start.
        daemon.extra_args = ["--max-store-bytes", "4MiB"]
        daemon.start()
        async with connect(daemon) as stub:
            await write_until_refused(stub, "more", more)
        assert len(more.messages) > len(written.messages)
        written.messages.update(more.messages)
        assert daemon.terminate() == 0
        assert_kept(daemon.data_dir, written)
    finally:
        daemon.kill()
    print(
        f"\nFIGURES size cap: 1 MiB held {len(written.messages) - len(more.messages)} sessions "
        f"with a 48 KiB message after {len(doomed)} were deleted to make room "
        f"({len(refill.messages)} new ones fitted); raised to 4 MiB: {len(more.messages)} more"
    )


async def test_resume_works_on_a_full_store_without_its_event(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp, ["--max-store-bytes", "1MiB"]).start()
    written, topped_up = Written(), Written()
    try:
        async with connect(daemon) as stub:
            await write_until_refused(stub, "fill", written)
            # Smaller writes take what the large ones left, so few resumes fill the rest.
            await write_until_refused(stub, "top", topped_up, prompt="y" * 2048)
            written.messages.update(topped_up.messages)
            target = next(iter(written.messages))
            before = await stub.ListEvents(pb.ListEventsRequest(session_id=target))

            reply, recorded = await resume_until_not_recorded(stub, target)
            # Resumed: the metadata and the tail as stored, with no event added.
            assert reply.session.session_id == target
            assert reply.session.last_sequence == before.events[-1].sequence + recorded
            assert reply.tail[-1].sequence == reply.session.last_sequence
            daemon.wait_for_output(f"session {target} resumed without a session.resume event")
            again = await stub.ResumeSession(pb.ResumeSessionRequest(session_id=target))
            assert again.resume_not_recorded

            # The client says so; reading works; writing still gets the clear error.
            async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
                session = await client.resume_session(target)
                assert not session.resume_recorded
                messages = await session.get_messages()
                assert len(messages) == reply.session.last_sequence
                with pytest.raises(ResourceExhaustedError, match="Delete old sessions") as full:
                    await session.send(PROMPT)
                assert full.value.reason == "ERROR_REASON_STORE_FULL"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CreateSession(
                    pb.CreateSessionRequest(
                        config=pb.SessionConfig(
                            session_id="new", system_message=pb.SystemMessage(content=PROMPT)
                        )
                    )
                )
            assert_store_full(refused.value, "size cap")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SendMessage(pb.SendMessageRequest(session_id=target, prompt=PROMPT))
            assert_store_full(refused.value, "size cap")
            await assert_reads_work(stub, written)

            # Deleting makes room: the next resume is recorded again.
            for session_id in list(written.messages)[1:4]:
                await stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id))
                del written.messages[session_id]
            reply = await stub.ResumeSession(
                pb.ResumeSessionRequest(session_id=target, tail_events=1)
            )
            assert not reply.resume_not_recorded
            assert reply.tail[-1].type == "session.resume"
            async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
                assert (await client.resume_session(target)).resume_recorded
        assert daemon.terminate() == 0
        assert_kept(daemon.data_dir, written)
    finally:
        daemon.kill()
    print(
        f"\nFIGURES resume on a full store: {len(written.messages)} sessions kept; "
        f"{recorded} resumes recorded before the store had no room for one, then resumed "
        "without the event"
    )


async def test_full_disk_refuses_writes_keeps_reads_and_recovers(
    short_tmp: Path, small_disk: Path
) -> None:
    daemon = DaemonProcess(short_tmp)
    daemon.data_dir = small_disk / "data"
    daemon.start()
    written, full, after = Written(), Written(), Written()
    try:
        async with connect(daemon) as stub:
            await write_until_refused(stub, "before", written, limit=3)
            filler = small_disk / "filler"
            filled = fill_disk(filler)
            await write_until_refused(stub, "full", full, limit=100)
            assert_store_full(full.refusal, "no space left on the disk")
            written.messages.update(full.messages)
            await assert_reads_work(stub, written)

            filler.unlink()
            await write_until_refused(stub, "after", after, limit=100)
            assert len(after.messages) > len(full.messages)
            written.messages.update(after.messages)
        assert daemon.terminate() == 0
        assert "Traceback" not in "".join(daemon.output)
        assert_kept(daemon.data_dir, written)
    finally:
        daemon.kill()
    print(
        f"\nFIGURES full disk: 4 MiB tmpfs, {filled} bytes of filler; {len(full.messages)} "
        f"sessions written before STORE_FULL, {len(after.messages)} after the filler went"
    )


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated to half": lambda data: data[: len(data) // 2],
    "truncated to its header": lambda data: data[:8192],
    "header overwritten": lambda data: b"\0" * 8192 + data[8192:],
    "truncated to one page": lambda data: data[:4096],
}
REFUSAL = {
    "truncated to half": "is truncated",
    "truncated to its header": "is truncated",
    "header overwritten": "cannot be read",
    "truncated to one page": "cannot be read",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
async def test_damaged_store_is_refused_untouched(short_tmp: Path, damage: str) -> None:
    daemon = DaemonProcess(short_tmp).start()
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        for index in range(20):
            session = await client.create_session(session_id=f"keep-{index}")
            await session.send_and_wait("remember " * 100, timeout=60)
    assert daemon.terminate() == 0
    data_file = daemon.data_dir / "store" / "data.mdb"
    original = data_file.read_bytes()
    damaged = DAMAGE[damage](original)
    data_file.write_bytes(damaged)

    result = await asyncio.to_thread(
        subprocess.run, daemon.command(), capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 1
    assert "copilotd: cannot start:" in result.stderr
    assert REFUSAL[damage] in result.stderr and "left untouched" in result.stderr
    assert data_file.read_bytes() == damaged
    # Put back, the store opens whole: nothing was written over it.
    data_file.write_bytes(original)
    report = check_store(daemon.data_dir)
    assert len(report.sessions) == 20


def test_store_cap_settings() -> None:
    assert parse_size("512MiB", "x") == 512 << 20
    assert parse_size("2 g", "x") == 2 << 30
    assert parse_size(1 << 20, "x") == 1 << 20
    assert max_store_bytes(ConfigFile(None, {"store": {"max_size": "8MiB"}}), None) == 8 << 20
    assert max_store_bytes(ConfigFile(None, {"store": {"max_size": "8MiB"}}), "1MiB") == 1 << 20
    assert max_store_bytes(ConfigFile(), None) is None
    with pytest.raises(ConfigError, match="is not a size"):
        parse_size("lots", "--max-store-bytes")
    with pytest.raises(ConfigError, match="too small"):
        parse_size("1k", "--max-store-bytes")
