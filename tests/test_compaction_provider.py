"""Infinite sessions against a strict provider server: when compaction runs, what the
model is sent, tool pairs, bounded input, and a SIGKILL in the middle.

A real ``copilotd serve`` talks to ``FakeModelServer`` (OpenAI wire format),
which records every request and refuses a history with a tool call and no
result (or a result with no call). The model's window is set in the
daemon's config, so a few kilobytes of prompt reach the thresholds.
Token figures are the daemon's estimate: 3 bytes a token, 4 a message.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from copilot_client import (
    CompactionFailedError,
    CopilotClient,
    CopilotSession,
    DaemonUnavailableError,
    InfiniteSessionConfig,
    SessionConfig,
    SessionEventType,
    SessionNotFoundError,
    Tool,
)
from copilotd.providers.base import SUMMARY_HEADING
from copilotd.sessions.compaction import SUMMARIZER_INSTRUCTIONS
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import (
    Call,
    FakeModelServer,
    Reply,
    Request,
    calls,
    error,
    stream,
)
from tests.support.session_events import Recorder, check_log_integrity, types
from tests.support.store_check import check_store

T = SessionEventType
FACT = "remember: the launch code is 7421"
WINDOW = 2000  # tokens: the model's prompt budget (no max_output_tokens)


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as running:
        yield running


def start_daemon(root: Path, server: FakeModelServer, window: int = WINDOW) -> DaemonProcess:
    config = root / "config.toml"
    config.write_text(
        f"""
[models]
default = "gpt-test"

[providers.fake]
type = "openai"
base_url = "{server.url}/v1"
max_retries = 0
models = {{ "gpt-test" = {{ context_window = {window} }} }}
"""
    )
    return DaemonProcess(root, ["--config", str(config)]).start()


@pytest.fixture
async def daemon_and_client(
    short_tmp: Path, server: FakeModelServer
) -> AsyncIterator[tuple[DaemonProcess, CopilotClient]]:
    daemon = start_daemon(short_tmp, server)
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            yield daemon, client
    finally:
        daemon.kill()


def is_summary(request: Request) -> bool:
    return str(request.messages[0]["content"]).startswith(SUMMARIZER_INSTRUCTIONS)


def contents(request: Request, role: str) -> list[str]:
    return [str(m.get("content") or "") for m in request.messages if m["role"] == role]


def estimated_tokens(request: Request) -> int:
    """The daemon's estimate of a request's messages (what its budget bounds)."""
    return sum(-(-len(str(m.get("content") or "").encode()) // 3) + 4 for m in request.messages)


async def ask(session: CopilotSession, prompt: str) -> None:
    answer = await session.send_and_wait(prompt, timeout=60)
    assert answer is not None


def fine(n: int) -> list[Reply]:
    return [stream(f"Fine {i}.") for i in range(n)]


async def test_the_background_threshold_compacts_while_turns_go_on(
    daemon_and_client: tuple[DaemonProcess, CopilotClient], server: FakeModelServer
) -> None:
    _, client = daemon_and_client
    gate = threading.Event()
    held_summary = Reply(chunks=(FACT, "\nsecond: two"), gate=gate)
    server.script(*fine(3), held_summary, *fine(2))
    settings = InfiniteSessionConfig(
        background_compaction_threshold=0.5, buffer_exhaustion_threshold=1.0
    )
    session = await client.create_session(SessionConfig(infinite_sessions=settings))
    recorder = Recorder()
    session.on(recorder)
    await ask(session, f"Hello. {FACT}")
    await ask(session, "two")
    await ask(session, "x" * 3000)  # about 1000 tokens: past half the window

    # The summary request is open, held by the server after its first chunk ...
    await server.wait_for_async(lambda rs: len(rs) == 4 and rs[3].chunks_sent == 1)
    summary_request = server.requests[3]
    assert is_summary(summary_request)
    (transcript,) = contents(summary_request, "user")
    assert f"user: Hello. {FACT}" in transcript and "user: two" not in transcript
    start = await recorder.wait_type(T.SESSION_COMPACTION_START)
    assert start.data.trigger == "threshold"
    # ... and a turn runs meanwhile, with the whole history.
    await ask(session, "four")
    during = server.requests[4]
    assert f"Hello. {FACT}" in contents(during, "user")
    assert not any(e.type is T.SESSION_COMPACTION_COMPLETE for e in recorder.events)

    gate.set()
    complete = await recorder.wait_type(T.SESSION_COMPACTION_COMPLETE)
    assert complete.data.success and complete.data.trigger == "threshold"
    assert complete.data.summary_content == f"{FACT}\nsecond: two"
    assert complete.data.up_to_sequence is not None
    assert complete.data.up_to_sequence < start.sequence < complete.sequence
    pre, post = complete.data.pre_compaction_tokens, complete.data.post_compaction_tokens
    assert pre is not None and post is not None and post < pre

    await ask(session, "five")
    after = server.requests[5]
    (system,) = contents(after, "system")
    assert system.endswith(f"{SUMMARY_HEADING}\n{FACT}\nsecond: two")
    users = contents(after, "user")
    assert users[0] == "two" and f"Hello. {FACT}" not in users  # summarised, not resent
    check_log_integrity(await session.get_messages())


async def test_at_the_exhaustion_threshold_the_turn_waits_for_the_compaction(
    daemon_and_client: tuple[DaemonProcess, CopilotClient], server: FakeModelServer
) -> None:
    _, client = daemon_and_client
    server.script(*fine(2), stream(FACT), *fine(1))
    settings = InfiniteSessionConfig(
        background_compaction_threshold=0.9, buffer_exhaustion_threshold=0.9
    )
    session = await client.create_session(SessionConfig(infinite_sessions=settings))
    await ask(session, f"Hello. {FACT}")
    await ask(session, "two")
    await ask(session, "y" * 5400)  # 1800 tokens with it: at 0.9 of the window

    summary, turn = server.requests[2:]
    assert is_summary(summary) and summary.outcome == "completed"
    assert summary.ended_at is not None and summary.ended_at <= turn.received_at
    (system,) = contents(turn, "system")
    assert system.endswith(f"{SUMMARY_HEADING}\n{FACT}")
    assert contents(turn, "user") == ["two", "y" * 5400]
    history = await session.get_messages()
    third = [e.type for e in history if e.sequence > history[-1].sequence - 8]
    # The compaction ran inside the turn that waited for it, before its answer.
    assert third[-7:-2] == [
        T.USER_MESSAGE,
        T.ASSISTANT_TURN_START,
        T.SESSION_COMPACTION_START,
        T.SESSION_COMPACTION_COMPLETE,
        T.ASSISTANT_MESSAGE,
    ]
    start = next(e for e in history if e.type is T.SESSION_COMPACTION_START)
    assert start.data.trigger == "exhaustion"
    assert len(server.requests) == 4  # the turn's end left nothing more to compact


async def test_a_compaction_keeps_tool_calls_with_their_results(
    daemon_and_client: tuple[DaemonProcess, CopilotClient], server: FakeModelServer
) -> None:
    _, client = daemon_and_client
    lookup = Tool(
        "lookup", "Looks a word up", {"type": "object"}, lambda _: "found it", skip_permission=True
    )
    server.script(
        calls(Call("lookup", {"q": "a"}, "call_a")),
        stream("Looked up a."),
        calls(Call("lookup", {"q": "b"}, "call_b"), Call("lookup", {"q": "c"}, "call_c")),
        stream("Looked up b and c."),
        calls(Call("lookup", {"q": "d"}, "call_d")),
        stream("Looked up d."),
        stream(FACT),  # the summary
        calls(Call("lookup", {"q": "e"}, "call_e")),
        stream("Looked up e."),
    )
    session = await client.create_session(
        SessionConfig(infinite_sessions={"enabled": False}, tools=[lookup])
    )
    for word in "abd":
        await ask(session, f"look {word} up")
    result = await session.compact()
    assert result.messages_removed == 4  # question, call, result, answer
    await ask(session, "look e up")

    summary = server.requests[6]
    assert is_summary(summary)
    (transcript,) = contents(summary, "user")
    assert 'assistant called lookup {"q": "a"} (call_a)' in transcript
    assert "tool result (call_a): found it" in transcript
    assert "call_b" not in transcript  # the next turns' pairs stay whole, verbatim
    # Every request was accepted by the strict server: no call without its result.
    assert [r.outcome for r in server.requests] == ["completed"] * 9
    sent = server.requests[7].messages
    ids = [c["id"] for m in sent if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    assert ids == ["call_b", "call_c", "call_d"]  # a went into the summary with its result
    assert [m["tool_call_id"] for m in sent if m["role"] == "tool"] == ids


async def test_summary_input_is_chunked_to_fit_the_window(
    short_tmp: Path, server: FakeModelServer
) -> None:
    window = 1200
    daemon = start_daemon(short_tmp, server, window)
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.create_session(
                SessionConfig(
                    infinite_sessions=InfiniteSessionConfig(enabled=False, summary_max_tokens=100)
                )
            )
            prompts = [f"{n} " + "w" * 900 for n in range(8)] + ["z" * 10_000, "last", "end"]
            for prompt in prompts:
                await ask(session, prompt)
            before = len(server.requests)
            result = await session.compact()
            summaries = server.requests[before:]
            assert len(summaries) == result.chunks > 2
            assert all(is_summary(r) for r in summaries)
            # Each call fits the window, the 10,000-character message (cut) included.
            assert max(map(estimated_tokens, summaries)) <= window
            (cut,) = [r for r in summaries if "z" * 2000 in contents(r, "user")[0]]
            assert (
                "z" * 10_000 not in contents(cut, "user")[0] and "[cut]" in contents(cut, "user")[0]
            )
            # Each call carries the summary so far (the fake server answers
            # with the same text every time).
            assert all(server.default_text in contents(r, "user")[0] for r in summaries[1:])
    finally:
        daemon.kill()


async def test_sigkill_during_a_compaction_leaves_the_session_as_before(
    short_tmp: Path, server: FakeModelServer
) -> None:
    daemon = start_daemon(short_tmp, server)
    server.script(*fine(3), Reply(hang=True))
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.create_session(
                SessionConfig(infinite_sessions={"enabled": False})
            )
            session_id = session.session_id
            for prompt in (f"Hello. {FACT}", "two", "three"):
                await ask(session, prompt)
            compacting = asyncio.create_task(session.compact())
            await server.wait_for_async(lambda rs: len(rs) == 4)
            assert is_summary(server.requests[3])
            daemon.kill()
            with pytest.raises(DaemonUnavailableError):
                await compacting
        report = check_store(daemon.data_dir)
        assert report.open_turns == {}  # the log is whole; no turn was left open
        daemon.start()
        server.script(stream("Fine again."), stream(FACT), stream("Fine at last."))
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.resume_session(session_id)
            history = await session.get_messages()
            assert T.SESSION_COMPACTION_START in types(history)
            assert T.SESSION_COMPACTION_COMPLETE not in types(history)
            await ask(session, "four")
            after_restart = server.requests[4]
            # As before the compaction began: no summary, every message.
            assert contents(after_restart, "system")[0].find(SUMMARY_HEADING) == -1
            assert contents(after_restart, "user") == [f"Hello. {FACT}", "two", "three", "four"]

            result = await session.compact()  # a later one completes
            assert result.summary_content == FACT and result.from_sequence == 1
            await ask(session, "five")
            assert contents(server.requests[6], "user") == ["three", "four", "five"]
    finally:
        daemon.kill()


async def test_a_failed_or_interrupted_compaction_leaves_the_context_as_before(
    short_tmp: Path, server: FakeModelServer
) -> None:
    daemon = start_daemon(short_tmp, server)
    server.script(*fine(3), error(500, "the summariser is down"), fine(1)[0], Reply(hang=True))
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.create_session(
                SessionConfig(infinite_sessions={"enabled": False})
            )
            for prompt in (f"Hello. {FACT}", "two", "three"):
                await ask(session, prompt)
            with pytest.raises(CompactionFailedError, match="the summariser is down"):
                await session.compact()
            history = await session.get_messages()
            failed = history[-1]
            assert failed.type is T.SESSION_COMPACTION_COMPLETE and failed.data.success is False
            assert "the summariser is down" in (failed.data.error or "")
            await ask(session, "four")
            assert contents(server.requests[4], "user")[0] == f"Hello. {FACT}"

            # Shutdown in the middle of one: the daemon stops it and exits.
            compacting = asyncio.create_task(session.compact())
            await server.wait_for_async(lambda rs: len(rs) == 6)
            assert daemon.terminate() == 0
            with pytest.raises(DaemonUnavailableError):
                await compacting
        daemon.start()
        server.script(stream("Fine again."))
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
            session = await client.resume_session(session.session_id)
            await ask(session, "five")
            request = server.requests[6]
            assert SUMMARY_HEADING not in contents(request, "system")[0]
            assert contents(request, "user")[0] == f"Hello. {FACT}"
            history = await session.get_messages()
            assert types(history).count(T.SESSION_COMPACTION_START) == 2
            assert types(history).count(T.SESSION_COMPACTION_COMPLETE) == 1
    finally:
        daemon.kill()


async def test_deleting_a_session_stops_its_compaction(
    daemon_and_client: tuple[DaemonProcess, CopilotClient], server: FakeModelServer
) -> None:
    _, client = daemon_and_client
    server.script(*fine(3), Reply(hang=True))
    session = await client.create_session(SessionConfig(infinite_sessions={"enabled": False}))
    for prompt in ("one", "two", "three"):
        await ask(session, prompt)
    compacting = asyncio.create_task(session.compact())
    await server.wait_for_async(lambda rs: len(rs) == 4)
    await client.delete_session(session.session_id)
    with pytest.raises(SessionNotFoundError):
        await compacting
    # The summary request was given up, not left running.
    await server.wait_for_async(lambda rs: rs[3].outcome == "disconnected")


async def test_a_turn_at_exhaustion_waits_for_the_background_compaction_under_way(
    daemon_and_client: tuple[DaemonProcess, CopilotClient], server: FakeModelServer
) -> None:
    _, client = daemon_and_client
    gate = threading.Event()
    server.script(*fine(3), Reply(chunks=(FACT,), gate=gate), *fine(1))
    settings = InfiniteSessionConfig(
        background_compaction_threshold=0.5, buffer_exhaustion_threshold=0.7
    )
    session = await client.create_session(SessionConfig(infinite_sessions=settings))
    recorder = Recorder()
    session.on(recorder)
    for prompt in (f"Hello. {FACT}", "two", "x" * 3000):
        await ask(session, prompt)
    await server.wait_for_async(lambda rs: len(rs) == 4 and rs[3].chunks_sent == 1)
    waiting = asyncio.create_task(ask(session, "y" * 1500))  # past 0.7 of the window
    await recorder.wait_type(T.ASSISTANT_TURN_START, count=4)
    gate.set()
    await waiting

    summary, turn = server.requests[3:]
    assert summary.ended_at is not None and summary.ended_at <= turn.received_at
    assert contents(turn, "system")[0].endswith(f"{SUMMARY_HEADING}\n{FACT}")
    history = await session.get_messages()
    start = next(e for e in history if e.type is T.SESSION_COMPACTION_START)
    assert start.data.trigger == "threshold"  # the one under way, not a second one
    assert types(history)[-5:] == [
        T.ASSISTANT_TURN_START,
        T.SESSION_COMPACTION_COMPLETE,
        T.ASSISTANT_MESSAGE,
        T.ASSISTANT_USAGE,
        T.ASSISTANT_TURN_END,
    ]
