"""A compaction's input is the session's whole visible history, and its model calls
are counted.

A real ``copilotd serve`` with its offline model, which keeps the lines marked
``remember:`` in its summaries and quotes the summary it was given when asked.
"""

from __future__ import annotations

from copilot_client import CopilotClient, CopilotSession, InfiniteSessionConfig, SessionEventType
from copilotd.sessions.context_window import MAX_CHARS
from tests.support.daemon_process import DaemonProcess

FACT = "remember: the vault opens with 9183"
# Each filler message is a fifth of the cached context: the history below is
# several times what the daemon caches.
FILLER = "filler " * (MAX_CHARS // 5 // 7)
FILLER_TURNS = 16


async def ask(session: CopilotSession, prompt: str) -> str:
    answer = await session.send_and_wait(prompt, timeout=60)
    assert answer is not None and answer.data.content is not None
    return answer.data.content


async def test_a_first_compaction_of_a_long_session_summarises_its_first_turn(
    daemon: DaemonProcess,
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session()
        await ask(session, f"Hello.\n{FACT}")
        for n in range(FILLER_TURNS):
            await ask(session, f"turn {n}\n{FILLER}")
        await ask(session, "almost done")
        await ask(session, "done")
        history = await session.get_messages()
        prompts = [e.data.content or "" for e in history if e.type is SessionEventType.USER_MESSAGE]
        total = sum(map(len, prompts))
        assert total > 3 * MAX_CHARS

    # Infinite sessions turned on for a long session after a restart: nothing
    # of it is cached, and the cache would hold the latest 512 KiB only.
    daemon.terminate()
    daemon.start()
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        resumed = await client.resume_session(
            session.session_id, infinite_sessions=InfiniteSessionConfig(enabled=False)
        )
        result = await resumed.compact()
        assert result.summary_content == FACT
        assert result.from_sequence == 1
        # Every message before the latest two turns: the first turn, the fillers.
        assert result.messages_removed == 2 * (1 + FILLER_TURNS)
        assert result.chunks > 1  # chunked: far more than one call's input
        answer = await ask(resumed, "What opens the vault?")
        assert f"The summary I was given: {FACT}." in answer
        assert "filler" not in answer
