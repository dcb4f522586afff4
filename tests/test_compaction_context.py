"""What the model's context holds around compactions, read from every store backend
(memory, LMDB, PostgreSQL): the latest completed summary and the events after its
range; starts without a complete and failed compactions change nothing; the
range keeps tool pairs whole.
"""

from __future__ import annotations

from typing import Any

from copilotd.events import (
    ASSISTANT_MESSAGE,
    SESSION_COMPACTION_COMPLETE,
    SESSION_COMPACTION_START,
    TOOL_EXECUTION_COMPLETE,
    USER_MESSAGE,
    make_event,
)
from copilotd.providers import ChatMessage, ToolCall
from copilotd.sessions.compaction import bounded, choose_cut, chunked
from copilotd.sessions.context_window import ContextWindow
from copilotd.store import SessionEvent, SessionMetadata, Store
from tests.support.store_ops import Backend, LmdbBackend, MemoryBackend, PostgresBackend


def seed(store: Store, events: list[SessionEvent]) -> None:
    (result,) = store.write_batch(
        [lambda w: w.create_session(SessionMetadata(session_id="s"), events)]
    )
    assert not isinstance(result, Exception)


def user(text: str) -> SessionEvent:
    return make_event(USER_MESSAGE, content=text)


def answer(text: str, *calls: str) -> SessionEvent:
    requests = [{"tool_call_id": c, "name": "lookup", "arguments_json": "{}"} for c in calls]
    return make_event(ASSISTANT_MESSAGE, content=text, tool_requests=requests)


def result(call_id: str) -> SessionEvent:
    return make_event(
        TOOL_EXECUTION_COMPLETE,
        tool_call_id=call_id,
        result={"text_result_for_llm": f"result of {call_id}"},
    )


def complete(up_to: int, summary: str, **more: Any) -> SessionEvent:
    return make_event(
        SESSION_COMPACTION_COMPLETE,
        success=True,
        up_to_sequence=up_to,
        summary_content=summary,
        **more,
    )


def contents(window: ContextWindow) -> list[str]:
    return [m.content for m in window.messages]


class CompactedContext(Backend):
    """Loading a session's context around its compactions, the same on every backend."""

    def test_the_context_is_the_latest_summary_and_what_follows_its_range(
        self, store: Store
    ) -> None:
        seed(
            store,
            [
                user("q1"),  # 1
                answer("a1"),  # 2
                user("q2"),  # 3
                answer("a2"),  # 4
                complete(2, "first summary"),  # 5
                user("q3"),  # 6
                answer("a3"),  # 7
                # The second compaction covers up to 4; q3 came before it was written.
                complete(4, "second summary"),  # 8
                user("q4"),  # 9
            ],
        )
        window = ContextWindow.load(store, "s")
        assert window.summary == "second summary" and window.summary_covers == 4
        assert contents(window) == ["q3", "a3", "q4"]

    def test_a_start_without_its_complete_or_a_failure_changes_nothing(self, store: Store) -> None:
        seed(
            store,
            [
                user("q1"),
                answer("a1"),
                user("q2"),
                answer("a2"),
                # The daemon was killed during this one ...
                make_event(SESSION_COMPACTION_START, up_to_sequence=2, from_sequence=1),
                # ... and this one failed.
                make_event(SESSION_COMPACTION_COMPLETE, success=False, up_to_sequence=4, error="x"),
                user("q3"),
            ],
        )
        window = ContextWindow.load(store, "s")
        assert window.summary == "" and window.summary_covers == 0
        assert contents(window) == ["q1", "a1", "q2", "a2", "q3"]

    def test_the_store_counts_completed_compactions(self, store: Store) -> None:
        seed(store, [user("q1"), complete(1, "s"), make_event(SESSION_COMPACTION_COMPLETE)])
        record = store.get_session("s")
        assert record is not None and record.metadata.compaction_count == 1


class TestMemoryContext(MemoryBackend, CompactedContext):
    pass


class TestLmdbContext(LmdbBackend, CompactedContext):
    pass


class TestPostgresContext(PostgresBackend, CompactedContext):
    pass


def test_a_cached_window_applies_a_compaction_committed_later() -> None:
    window = ContextWindow(
        [
            ChatMessage("user", "q1", 1),
            ChatMessage("assistant", "a1", 2),
            ChatMessage("user", "q2", 3),
        ]
    )
    before = window.tokens
    changed = window.follow(
        [make_event(SESSION_COMPACTION_START, up_to_sequence=2), complete(2, "summary")]
    )
    assert changed and window.summary == "summary"
    assert contents(window) == ["q2"] and window.tokens < before
    # A failed one that arrives afterwards changes nothing.
    window.follow([make_event(SESSION_COMPACTION_COMPLETE, success=False, up_to_sequence=3)])
    assert contents(window) == ["q2"] and window.summary == "summary"


def messages(*spec: tuple[str, str, tuple[str, ...] | str]) -> list[ChatMessage]:
    """(role, text, calls for an assistant / call id for a tool) -> messages, numbered."""
    out = []
    for sequence, (role, text, extra) in enumerate(spec, start=1):
        if role == "assistant":
            calls = tuple(ToolCall(c, "lookup", "{}") for c in extra)
            out.append(ChatMessage("assistant", text, sequence, tool_calls=calls))
        elif role == "tool":
            assert isinstance(extra, str)
            out.append(ChatMessage("tool", text, sequence, tool_call_id=extra))
        else:
            out.append(ChatMessage("user", text, sequence))
    return out


def test_the_cut_keeps_the_latest_turns_and_moves_back_to_keep_a_pair_whole() -> None:
    plain = messages(
        ("user", "q1", ()),
        ("assistant", "", ("c1",)),
        ("tool", "r1", "c1"),
        ("assistant", "a1", ()),
        ("user", "q2", ()),
        ("assistant", "a2", ()),
        ("user", "q3", ()),
    )
    assert choose_cut(plain) == 4  # q2 and q3 stay verbatim; q1's round goes whole
    assert choose_cut(plain[:4] + plain[6:]) == 0  # two turns: nothing to summarise
    # An imported log whose call was answered only after the next user message:
    # cutting at that message would leave the result without its call.
    late = messages(
        ("user", "q1", ()),
        ("assistant", "a1", ()),
        ("user", "q2", ()),
        ("assistant", "", ("c1",)),
        ("user", "q3", ()),
        ("tool", "r1", "c1"),
        ("assistant", "a3", ()),
        ("user", "q4", ()),
    )
    cut = choose_cut(late)
    assert cut == 3  # before the call, not at q3
    kept_calls = {c.call_id for m in late[cut:] for c in m.tool_calls}
    assert {m.tool_call_id for m in late[cut:] if m.role == "tool"} <= kept_calls


def test_chunks_fit_and_a_summary_stays_within_its_bound() -> None:
    entries = [f"user: {'w' * 300}" for _ in range(10)] + ["z" * 5000]
    chunks = chunked(entries, 250)
    assert len(chunks) > 5
    assert all(sum(-(-len(e.encode()) // 3) + 1 for e in chunk) <= 250 for chunk in chunks)
    assert chunks[-1][0].endswith("[cut]")
    summary = "\n".join(f"line {n}" for n in range(100))
    short = bounded(summary, 20)
    assert len(short.encode()) <= 60 and summary.startswith(short + "\n")  # whole lines
