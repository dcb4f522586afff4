"""A session's model context: the recent messages a turn sends to the model.

The context is cached per session while the session is in use, so that a turn
never re-reads the history, and bounded, so that neither a turn's work nor
the cache's memory grows with the length of the history: it holds the most
recent user and assistant messages up to ``MAX_CHARS`` characters (whole
messages; the latest one always). Loading it reads the log backwards from the
end, a page at a time, only as far as the budget reaches.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Final

from copilotd import events as ev
from copilotd.events import SessionEvent
from copilotd.providers import ChatMessage, ToolCall
from copilotd.sessions.token_budget import message_tokens
from copilotd.store import Store
from copilotd.store.visible import read_visible

# About 128k tokens at four characters a token: the window of today's common
# models. A provider with a smaller window trims further.
MAX_CHARS: Final = 512 * 1024
# Events read per page while loading (backwards from the end).
LOAD_PAGE_EVENTS: Final = 500
# Memory a cached message takes besides its text: the ChatMessage and its
# slot in the window's list.
MESSAGE_OVERHEAD_BYTES: Final = sys.getsizeof(ChatMessage("user", "", 0)) + 8


def message_bytes(message: ChatMessage) -> int:
    """The memory a cached message holds (Python stores text in 1 to 4 bytes a character)."""
    return sys.getsizeof(message.content) + MESSAGE_OVERHEAD_BYTES


def context_messages(events: Iterable[SessionEvent]) -> list[ChatMessage]:
    """The user and assistant messages and tool results among ``events``, in their order."""
    messages = []
    for event in events:
        if event.type == ev.USER_MESSAGE:
            messages.append(ChatMessage("user", event.user_message.content, event.sequence))
        elif event.type == ev.ASSISTANT_MESSAGE and (
            event.assistant_message.content or event.assistant_message.tool_requests
        ):
            calls = tuple(
                ToolCall(request.tool_call_id, request.name, request.arguments_json)
                for request in event.assistant_message.tool_requests
            )
            messages.append(
                ChatMessage(
                    "assistant", event.assistant_message.content, event.sequence, tool_calls=calls
                )
            )
        elif event.type == ev.TOOL_EXECUTION_COMPLETE:
            complete = event.tool_execution_complete
            messages.append(
                ChatMessage(
                    "tool",
                    complete.result.text_result_for_llm,
                    event.sequence,
                    tool_call_id=complete.tool_call_id,
                )
            )
    return messages


class ContextWindow:
    """The most recent messages of one session, oldest first, within ``max_chars``."""

    def __init__(self, messages: Sequence[ChatMessage] = (), *, max_chars: int = MAX_CHARS):
        self._max_chars = max_chars
        self._messages: list[ChatMessage] = []
        self._chars = 0
        self._tokens = 0
        self._bytes = 0
        self.extend(messages)

    @classmethod
    def load(cls, store: Store, session_id: str, *, max_chars: int = MAX_CHARS) -> ContextWindow:
        """Read the session's recent messages, newest first, until the budget is spent.

        The visible history only: events cut by a rewind are not the model's.
        """
        newest_first: list[ChatMessage] = []
        chars = 0
        before: int | None = None
        while chars < max_chars:
            page = read_visible(
                store, session_id, before=before, limit=LOAD_PAGE_EVENTS, newest_first=True
            )
            for message in context_messages(page):
                if chars >= max_chars:
                    break
                newest_first.append(message)
                chars += len(message.content)
            if len(page) < LOAD_PAGE_EVENTS or page[-1].sequence <= 1:
                break
            before = page[-1].sequence
        newest_first.reverse()
        return cls(newest_first, max_chars=max_chars)

    @property
    def messages(self) -> list[ChatMessage]:
        """The messages, oldest first (the window's own list: do not change it)."""
        return self._messages

    @property
    def tokens(self) -> int:
        """The estimated tokens of all the messages (kept up to date, for the budget)."""
        return self._tokens

    @property
    def memory_bytes(self) -> int:
        """The memory the cached messages hold (``message_bytes`` summed)."""
        return self._bytes

    def extend(self, messages: Iterable[ChatMessage]) -> None:
        """Add newer messages, dropping the oldest ones beyond the budget."""
        for message in messages:
            self._messages.append(message)
            self._chars += len(message.content)
            self._tokens += message_tokens(message)
            self._bytes += message_bytes(message)
        drop = 0
        while drop < len(self._messages) - 1 and (
            self._chars > self._max_chars
            # A tool result first has its call left out (dropped here, or not
            # loaded: the budget ran out on it): a provider refuses it alone.
            or self._messages[drop].role == "tool"
        ):
            self._chars -= len(self._messages[drop].content)
            self._tokens -= message_tokens(self._messages[drop])
            self._bytes -= message_bytes(self._messages[drop])
            drop += 1
        del self._messages[:drop]
