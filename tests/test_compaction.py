"""Infinite sessions with the offline model: manual compaction, what the model sees
after many compactions, the raw history kept, and the settings' checks.

A real ``copilotd serve`` answers with its offline model, whose summaries
are deterministic (it keeps the lines marked ``remember:``) and whose
answers quote the summary its system message carries, so a test sees what
the model was given. tests/test_compaction_provider.py covers the automatic
triggers, tool pairs and crashes against a strict provider server.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from copilot_client import (
    CopilotClient,
    CopilotSession,
    InfiniteSessionConfig,
    InvalidArgumentError,
    NothingToCompactError,
    SessionConfig,
    SessionEventType,
)
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc, events_pb2
from copilot_client.wire import REASON_METADATA_KEY as REASON
from tests.support.cli import copilotd, ok
from tests.support.daemon_process import DaemonProcess
from tests.support.session_events import Recorder, check_log_integrity

T = SessionEventType
FACT = "remember: the launch code is 7421"
MANUAL_ONLY = InfiniteSessionConfig(enabled=False)


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as running:
        yield running


async def ask(session: CopilotSession, prompt: str) -> str:
    answer = await session.send_and_wait(prompt, timeout=30)
    assert answer is not None and answer.data.content is not None
    return answer.data.content


async def settings(client: CopilotClient, session_id: str) -> InfiniteSessionConfig | None:
    metadata = await client.get_session_metadata(session_id)
    assert metadata is not None
    return metadata.infinite_sessions


async def compactions(client: CopilotClient, session_id: str) -> int:
    metadata = await client.get_session_metadata(session_id)
    assert metadata is not None
    return metadata.compaction_count


def recalled_count(answer: str) -> int:
    """How many earlier user messages the offline model says it was given."""
    match = re.search(r"\((\d+) earlier messages?\)", answer)
    return int(match[1]) if match else 0


async def test_a_fact_from_the_first_turn_survives_50_compactions(client: CopilotClient) -> None:
    session = await client.create_session(SessionConfig(infinite_sessions=MANUAL_ONLY))
    await ask(session, f"Hello.\n{FACT}")
    await ask(session, "second")
    results = []
    for n in range(50):
        await ask(session, f"turn {n}")
        results.append(await session.compact())

    answer = await ask(session, "What is the launch code?")
    # The model was given the fact (through the summary), not the first message:
    # it sees the summary and the latest turns only.
    assert f"The summary I was given: {FACT}." in answer
    assert recalled_count(answer) == 2
    assert [r.trigger for r in results] == ["manual"] * 50
    assert all(r.summary_content == FACT for r in results)
    # Each summarised what followed the previous one's range (and carried it).
    assert results[0].from_sequence == 1
    for previous, result in itertools.pairwise(results):
        assert result.from_sequence == previous.up_to_sequence + 1 <= result.up_to_sequence
    assert all(r.messages_removed >= 2 for r in results)
    assert results[-1].post_compaction_tokens < results[-1].pre_compaction_tokens

    # The raw history is whole: every message, every compaction, in order.
    history = await session.get_messages()
    check_log_integrity(history)
    user_messages = [e.data.content for e in history if e.type is T.USER_MESSAGE]
    assert user_messages[0] == f"Hello.\n{FACT}" and len(user_messages) == 53
    assert sum(e.type is T.SESSION_COMPACTION_START for e in history) == 50
    completes = [e for e in history if e.type is T.SESSION_COMPACTION_COMPLETE]
    assert [e.data.success for e in completes] == [True] * 50
    assert completes[-1].data.summary_content == FACT
    assert await compactions(client, session.session_id) == 50


async def test_the_context_after_a_compaction_survives_a_restart(
    daemon: DaemonProcess, client: CopilotClient
) -> None:
    session = await client.create_session(SessionConfig(infinite_sessions=MANUAL_ONLY))
    for prompt in (FACT, "two", "three", "four"):
        await ask(session, prompt)
    result = await session.compact(custom_instructions="keep the numbers")
    assert result.messages_removed == 4  # two turns: questions and answers
    daemon.terminate()
    daemon.start()
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as again:
        resumed = await again.resume_session(session.session_id)
        answer = await ask(resumed, "five")
    assert f"The summary I was given: {FACT}." in answer
    assert recalled_count(answer) == 2  # "three", "four": not the summarised ones
    assert '"two"' not in answer


async def test_nothing_to_compact_while_everything_is_among_the_latest_turns(
    client: CopilotClient,
) -> None:
    session = await client.create_session()
    await ask(session, "one")
    await ask(session, "two")
    with pytest.raises(NothingToCompactError, match="latest 2 turns"):
        await session.compact()
    await ask(session, "three")
    result = await session.compact()
    assert result.summary_content == "Nothing was marked to remember."
    with pytest.raises(NothingToCompactError):
        await session.compact()  # the same two turns are all that is left


async def test_settings_are_stored_changed_on_resume_and_checked(client: CopilotClient) -> None:
    session = await client.create_session(
        SessionConfig(infinite_sessions={"enabled": True, "background_compaction_threshold": 0.6})
    )
    stored = await settings(client, session.session_id)
    assert stored is not None and stored.background_compaction_threshold == pytest.approx(0.6)
    await client.resume_session(session.session_id, infinite_sessions=MANUAL_ONLY)
    stored = await settings(client, session.session_id)
    assert stored is not None and not stored.enabled

    bad = [
        InfiniteSessionConfig(background_compaction_threshold=1.5),
        InfiniteSessionConfig(buffer_exhaustion_threshold=-0.1),
        InfiniteSessionConfig(background_compaction_threshold=0.9, buffer_exhaustion_threshold=0.5),
        InfiniteSessionConfig(background_compaction_threshold=float("nan")),
        InfiniteSessionConfig(summary_max_tokens=10**6),
    ]
    for config in bad:
        with pytest.raises(InvalidArgumentError) as refused:
            await client.create_session(SessionConfig(infinite_sessions=config))
        assert refused.value.reason == "ERROR_REASON_INVALID_INFINITE_SESSIONS"
        with pytest.raises(InvalidArgumentError):
            await client.resume_session(session.session_id, infinite_sessions=config)


@pytest.fixture
async def stub(daemon: DaemonProcess) -> AsyncIterator[copilot_pb2_grpc.CopilotServiceAsyncStub]:
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        yield copilot_pb2_grpc.CopilotServiceStub(channel)


async def test_compact_session_on_the_wire(
    stub: copilot_pb2_grpc.CopilotServiceAsyncStub,
) -> None:
    """What another language's client sees: statuses, reasons, the complete event."""
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.CompactSession(pb.CompactSessionRequest(session_id="nobody"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    created = await stub.CreateSession(pb.CreateSessionRequest(config=pb.SessionConfig()))
    session_id = created.session.session_id
    with pytest.raises(grpc.aio.AioRpcError) as too_long:
        await stub.CompactSession(
            pb.CompactSessionRequest(session_id=session_id, custom_instructions="x" * 2_000_000)
        )
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "custom_instructions" in (too_long.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stub.CompactSession(pb.CompactSessionRequest(session_id=session_id))
    assert empty.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    metadata = dict(empty.value.trailing_metadata() or ())
    assert metadata[REASON] == "ERROR_REASON_NOTHING_TO_COMPACT"

    for prompt in (FACT, "b", "c"):
        await stub.SendMessageAndWait(
            pb.SendMessageAndWaitRequest(session_id=session_id, prompt=prompt)
        )
    response = await stub.CompactSession(
        pb.CompactSessionRequest(session_id=session_id, custom_instructions="be brief")
    )
    event = response.compaction_complete
    assert event.type == "session.compaction_complete" and event.sequence > 0
    data = event.session_compaction_complete
    assert data.success and data.trigger == events_pb2.COMPACTION_TRIGGER_MANUAL
    assert data.summary_content == FACT and data.custom_instructions == "be brief"
    assert data.chunks == 1 and data.messages_removed == 2


async def test_export_and_search_see_every_event_and_an_import_keeps_the_summary(
    daemon: DaemonProcess, client: CopilotClient, tmp_path: Path
) -> None:
    session = await client.create_session(
        SessionConfig(session_id="long", infinite_sessions=MANUAL_ONLY)
    )
    for prompt in (f"{FACT}\nabout the zeppelin", "two", "three", "four"):
        await ask(session, prompt)
    await session.compact()
    exported = tmp_path / "long.jsonl"
    ok(copilotd(daemon, "export", "long", "-o", str(exported)))
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    kinds = [line["event"]["type"] for line in lines if line.get("kind") == "event"]
    assert kinds.count("user.message") == 4  # the summarised ones too
    assert kinds[-2:] == ["session.compaction_start", "session.compaction_complete"]
    hits = await client.search_sessions("zeppelin")
    assert 2 in [hit.sequence for hit in hits.hits]  # the first message, summarised

    ok(copilotd(daemon, "sessions", "delete", "--yes", "long"))
    ok(copilotd(daemon, "import", str(exported)))
    imported = await client.resume_session("long")
    answer = await ask(imported, "five")
    assert f"The summary I was given: {FACT}." in answer
    assert recalled_count(answer) == 2
    assert await compactions(client, "long") == 1


async def test_the_offline_model_with_a_window_compacts_on_its_own(short_tmp: Path) -> None:
    """The configuration client.md shows for trying automatic compaction offline."""
    config = short_tmp / "config.toml"
    config.write_text(
        '[models]\ndefault = "offline"\n\n[providers.local]\ntype = "offline"\n'
        'models = { "offline" = { context_window = 1500 } }\n'
    )
    daemon = DaemonProcess(short_tmp, ["--config", str(config)]).start()
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.create_session(
                SessionConfig(infinite_sessions=InfiniteSessionConfig())
            )
            recorder = Recorder()
            session.on(recorder)
            await ask(session, FACT)
            turns = 1
            while not any(e.type is T.SESSION_COMPACTION_START for e in recorder.events):
                await ask(session, f"turn {turns} " + "words " * 60)
                turns += 1
            complete = await recorder.wait_type(T.SESSION_COMPACTION_COMPLETE)
            assert complete.data.trigger == "threshold" and complete.data.summary_content == FACT
            answer = await ask(session, "and now?")
            assert f"The summary I was given: {FACT}." in answer
            assert turns < 10
    finally:
        daemon.kill()


async def test_a_summary_stays_within_its_bound_dropping_the_oldest_lines(
    client: CopilotClient,
) -> None:
    session = await client.create_session(
        SessionConfig(infinite_sessions=InfiniteSessionConfig(enabled=False, summary_max_tokens=30))
    )
    facts = [f"remember: fact number {n} is {n * 1111}" for n in range(8)]  # ~35 bytes each
    for fact in facts:
        await ask(session, fact)
    await ask(session, "and one more")
    result = await session.compact()
    kept = result.summary_content.splitlines()
    assert len(result.summary_content.encode()) <= 30 * 3
    assert kept == facts[7 - len(kept) : 7] and len(kept) == 2  # the newest summarised ones
