"""``copilotd sessions compact``: the real CLI against a real daemon (its offline model,
or a strict provider server holding the summary to see the CLI give up)."""

from __future__ import annotations

import threading
from pathlib import Path

from copilot_client import CopilotClient, CopilotSession, SessionEventType
from tests.support.cli import copilotd, ok, one_line_error
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import FakeModelServer, Reply, stream
from tests.support.session_events import Recorder
from tests.test_compaction_provider import start_daemon

T = SessionEventType
FACT = "remember: the harbour closes at nine"


async def ask(session: CopilotSession, prompt: str) -> None:
    assert await session.send_and_wait(prompt, timeout=60) is not None


async def test_compact_reports_tokens_and_range_and_refuses_clearly(daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session()
        sid = session.session_id
        await ask(session, FACT)
        await ask(session, "two")
        nothing = one_line_error(copilotd(daemon, "sessions", "compact", sid))
        assert "nothing to compact" in nothing and "run this again after more turns" in nothing
        await ask(session, "three")

        too_long = copilotd(
            daemon, "sessions", "compact", sid, "--instructions", "-", stdin="x" * 2_000_000
        )
        assert "--instructions" in one_line_error(too_long)
        missing = one_line_error(copilotd(daemon, "sessions", "compact", "nobody"))
        assert "'nobody'" in missing

        out = ok(copilotd(daemon, "sessions", "compact", sid, "--instructions", "keep numbers"))
        history = await session.get_messages()
        (complete,) = [e for e in history if e.type is T.SESSION_COMPACTION_COMPLETE]
        data = complete.data
        assert data.custom_instructions == "keep numbers" and data.summary_content == FACT
        first, second = out.splitlines()
        assert first == (
            f"compacted {sid}: events 1-{data.up_to_sequence} summarised (2 messages, "
            f"1 model call), recorded as event {complete.sequence}"
        )
        assert second == (
            f"context: {data.pre_compaction_tokens} -> {data.post_compaction_tokens} tokens "
            f"(estimated; {data.tokens_removed} removed)"
        )
        before, after = data.pre_compaction_tokens, data.post_compaction_tokens
        assert before is not None and after is not None and before > after > 0
        metadata = await client.get_session_metadata(sid)
        assert metadata is not None and metadata.compaction_count == 1


async def test_compact_gives_up_at_its_timeout_and_the_compaction_goes_on(
    short_tmp: Path,
) -> None:
    gate = threading.Event()
    with FakeModelServer() as server:
        server.script(
            *[stream("Fine.")] * 3,
            Reply(chunks=(FACT,), gate=gate),
            stream("Fine."),
            stream(FACT, usage=(90, 9)),
        )
        daemon = start_daemon(short_tmp, server)
        try:
            async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
                session = await client.create_session()
                recorder = Recorder()
                session.on(recorder)
                for prompt in (FACT, "two", "three"):
                    await ask(session, prompt)
                sid = session.session_id
                gave_up = copilotd(daemon, "--timeout", "2", "sessions", "compact", sid)
                error = one_line_error(gave_up)
                assert "no answer within 2s; the compaction goes on" in error
                assert "--timeout SECONDS" in error
                gate.set()
                complete = await recorder.wait_type(T.SESSION_COMPACTION_COMPLETE)
                assert complete.data.success and complete.data.summary_content == FACT

                await ask(session, "four")
                out = ok(copilotd(daemon, "sessions", "compact", sid))
                assert "summary calls used 90 input and 9 output tokens" in out.splitlines()
        finally:
            daemon.kill()
