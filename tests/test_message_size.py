"""Message size limits against a real daemon.

gRPC refuses a message over its size limit before any of the daemon's code
runs, with its own RESOURCE_EXHAUSTED and no "copilot-error-reason". The
daemon sets that limit well above its largest valid request (four times
``--max-prompt-bytes`` plus 1 MiB, at least 8 MiB), so a prompt over its
limit gets the daemon's own INVALID_ARGUMENT (PROMPT_TOO_LARGE) with the
sizes and what to do; only a request beyond the bound gets gRPC's refusal,
which the client turns into a ResourceExhaustedError that names the limit.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from copilot_client import CopilotClient, InvalidArgumentError, ResourceExhaustedError
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd.limits import max_message_bytes
from tests.support.daemon_process import DaemonProcess, short_temp_dir
from tests.support.wire import reason_of

MiB = 1 << 20
MAX_PROMPT = 4 * MiB
# Above the gRPC limit grpcio used before (8 MiB), below the daemon's bound.
OVER_THE_LIMIT = 12 * MiB
BOUND = max_message_bytes(MAX_PROMPT)
# The raw channel may send what the daemon refuses; the client's own limit is 64 MiB.
RAW_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    root = short_temp_dir("size")
    process = DaemonProcess(root, ["--max-prompt-bytes", str(MAX_PROMPT)]).start()
    yield process
    process.kill()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def stub(daemon: DaemonProcess) -> AsyncIterator[copilot_pb2_grpc.CopilotServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}", options=RAW_OPTIONS) as ch:
        yield copilot_pb2_grpc.CopilotServiceStub(ch)


async def test_a_valid_prompt_above_8_mib_of_answer_works(
    daemon: DaemonProcess, stub: copilot_pb2_grpc.CopilotServiceAsyncStub
) -> None:
    await stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="big")))
    prompt = "p" * MAX_PROMPT
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.resume_session("big")
        answer = await session.send_and_wait(prompt, timeout=60)
        assert answer is not None
        await session.send_and_wait(prompt, timeout=60)
        # Two stored prompts of 4 MiB: more than 8 MiB of history, read back
        # in pages that hold an event larger than the page budget alone.
        history = await session.get_messages()
        assert [e.data.content for e in history if e.type.value == "user.message"] == [
            prompt,
            prompt,
        ]
        page = await stub.ListEvents(pb.ListEventsRequest(session_id="big", page_size=1000))
        assert [e.type for e in page.events] == ["session.start", "session.resume"]
        page = await stub.ListEvents(
            pb.ListEventsRequest(session_id="big", cursor=page.next_cursor, page_size=1000)
        )
        assert [e.user_message.content for e in page.events] == [prompt]
        assert page.next_cursor == 3
        # The resume tail holds the newest events that fit its budget.
        resumed = await stub.ResumeSession(
            pb.ResumeSessionRequest(session_id="big", tail_events=20)
        )
        assert [e.type for e in resumed.tail] == [
            "assistant.turn_start",
            "assistant.message",
            "assistant.turn_end",
            "session.resume",
        ]


async def test_a_prompt_over_its_limit_gets_our_error(
    daemon: DaemonProcess, stub: copilot_pb2_grpc.CopilotServiceAsyncStub
) -> None:
    await stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="over")))
    prompt = "p" * OVER_THE_LIMIT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendMessage(pb.SendMessageRequest(session_id="over", prompt=prompt))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) == "ERROR_REASON_PROMPT_TOO_LARGE"
    assert f"prompt is {OVER_THE_LIMIT} bytes, over the limit of {MAX_PROMPT}" in (
        error.details() or ""
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSession(
            pb.CreateSessionRequest(
                config=pb.SessionConfig(
                    session_id="system", system_message=pb.SystemMessage(content=prompt)
                )
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.system_message.content is" in (caught.value.details() or "")
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.resume_session("over")
        with pytest.raises(InvalidArgumentError, match="--max-prompt-bytes") as refused:
            await session.send(prompt)
        assert refused.value.reason == "ERROR_REASON_PROMPT_TOO_LARGE"
        assert [m.type.value for m in await session.get_messages()] == [
            "session.start",
            "session.resume",
        ]


async def test_a_request_beyond_the_bound_gets_grpcs_refusal_and_a_clear_client_error(
    daemon: DaemonProcess, stub: copilot_pb2_grpc.CopilotServiceAsyncStub
) -> None:
    await stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig(session_id="huge")))
    prompt = "p" * (BOUND + 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendMessage(pb.SendMessageRequest(session_id="huge", prompt=prompt))
    error = caught.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(error) is None  # gRPC's refusal: none of our code ran
    assert "larger than max" in (error.details() or "")
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.resume_session("huge")
        with pytest.raises(ResourceExhaustedError) as refused:
            await session.send(prompt)
        message = refused.value.message
        assert f"over the daemon's message size limit of {BOUND} bytes" in message
        assert "--max-prompt-bytes" in message and "shorten the prompt" in message
        assert refused.value.reason == ""
    # The daemon lives on.
    assert (await stub.Ping(pb.PingRequest())).version
    print(
        f"\nFIGURES message size: --max-prompt-bytes {MAX_PROMPT}: a {OVER_THE_LIMIT}-byte "
        f"prompt gets INVALID_ARGUMENT (PROMPT_TOO_LARGE); a request over {BOUND} bytes "
        "gets gRPC's RESOURCE_EXHAUSTED"
    )


def test_the_bound_follows_the_prompt_limit() -> None:
    assert max_message_bytes(1 * MiB) == 8 * MiB  # the default: as before
    assert max_message_bytes(MAX_PROMPT) == 17 * MiB
    assert max_message_bytes(64 * MiB) > 64 * MiB * 2
