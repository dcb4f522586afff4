"""The per-session model context: recent messages within a budget, loaded from the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from copilotd.events import (
    ASSISTANT_MESSAGE,
    ASSISTANT_TURN_START,
    TOOL_EXECUTION_COMPLETE,
    USER_MESSAGE,
    make_event,
)
from copilotd.providers import ChatMessage
from copilotd.sessions import context_window
from copilotd.sessions.context_window import ContextWindow
from copilotd.store import LmdbStore, SessionEvent, SessionMetadata


class CountingStore(LmdbStore):
    """Counts the events its reads return."""

    events_read = 0

    def read_events(self, session_id: str, **window: Any) -> list[SessionEvent]:
        events = super().read_events(session_id, **window)
        self.events_read += len(events)
        return events


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    store = CountingStore.open(tmp_path / "store")
    assert isinstance(store, CountingStore)
    yield store
    store.close()


def turns(count: int) -> list[SessionEvent]:
    events = []
    for n in range(count):
        events.append(make_event(USER_MESSAGE, content=f"q{n:04d}"))
        events.append(make_event(ASSISTANT_TURN_START, turn_id=f"t{n}"))
        events.append(make_event(ASSISTANT_MESSAGE, content=f"a{n:04d}"))
    return events


def seed(store: CountingStore, session_id: str, events: list[SessionEvent]) -> None:
    (result,) = store.write_batch(
        [lambda w: w.create_session(SessionMetadata(session_id=session_id), events)]
    )
    assert not isinstance(result, Exception)
    store.events_read = 0


def contents(messages: list[ChatMessage]) -> list[str]:
    return [m.content for m in messages]


def test_extend_keeps_the_newest_messages_within_the_budget() -> None:
    window = ContextWindow(max_chars=10)
    window.extend([ChatMessage("user", "aaaa"), ChatMessage("assistant", "bbbb")])
    assert contents(window.messages) == ["aaaa", "bbbb"]
    window.extend([ChatMessage("user", "cccc")])
    assert contents(window.messages) == ["bbbb", "cccc"]


def test_the_latest_message_is_kept_even_beyond_the_budget() -> None:
    window = ContextWindow([ChatMessage("user", "short")], max_chars=10)
    window.extend([ChatMessage("user", "x" * 50)])
    assert contents(window.messages) == ["x" * 50]


def test_load_takes_user_and_assistant_messages_in_order(store: CountingStore) -> None:
    seed(store, "s", turns(3))
    window = ContextWindow.load(store, "s")
    assert [(m.role, m.content) for m in window.messages] == [
        ("user", "q0000"),
        ("assistant", "a0000"),
        ("user", "q0001"),
        ("assistant", "a0001"),
        ("user", "q0002"),
        ("assistant", "a0002"),
    ]


def test_load_reads_only_as_far_back_as_the_budget(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_window, "LOAD_PAGE_EVENTS", 30)
    seed(store, "s", turns(1_000))  # 3,000 events, 2,000 messages of 5 characters

    window = ContextWindow.load(store, "s", max_chars=100)

    assert contents(window.messages) == [
        text for n in range(990, 1_000) for text in (f"q{n:04d}", f"a{n:04d}")
    ]
    assert store.events_read == 30  # one page from the end, not 3,000 events


def test_load_of_a_history_shorter_than_the_budget_reads_it_all(
    store: CountingStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(context_window, "LOAD_PAGE_EVENTS", 30)
    seed(store, "s", turns(40))
    window = ContextWindow.load(store, "s", max_chars=10_000)
    assert len(window.messages) == 80
    assert store.events_read == 120


def test_a_loaded_window_never_starts_with_a_result_whose_call_was_left_out(
    store: CountingStore,
) -> None:
    """The budget is spent exactly on the newest messages down to a tool result: its
    call (older) stays out, so the result goes too (a provider refuses it alone)."""
    call = {"tool_call_id": "c1", "name": "get_weather", "arguments_json": "{}"}
    result = {"text_result_for_llm": "r" * 40}
    seed(
        store,
        "s",
        [
            make_event(USER_MESSAGE, content="q0"),
            make_event(ASSISTANT_MESSAGE, content="", tool_requests=[call]),
            make_event(TOOL_EXECUTION_COMPLETE, tool_call_id="c1", result=result),
            make_event(ASSISTANT_MESSAGE, content="answer"),
            make_event(USER_MESSAGE, content="next"),
        ],
    )
    window = ContextWindow.load(store, "s", max_chars=4 + 6 + 40)
    assert [(m.role, m.content) for m in window.messages] == [
        ("assistant", "answer"),
        ("user", "next"),
    ]
