"""A session's model context: the recent messages a turn sends to the model.

The context is cached per session while the session is in use, so that a turn
never re-reads the history, and bounded, so that neither a turn's work nor
the cache's memory grows with the length of the history: it holds the most
recent user and assistant messages up to ``MAX_CHARS`` characters (whole
messages; the latest one always). Loading it reads the log backwards from the
end, a page at a time, only as far as the budget reaches.

After a compaction the context is: the latest completed summary (carried in
the system message, ``providers.with_summary``) and the messages after the
range it covers. This module is the one place that rule lives: ``load``
stops reading at the range's end, and ``extend`` applies a compaction
committed while the window is cached. A ``session.compaction_start`` with no
successful complete (its daemon was killed, or it failed) is ignored
(``events.completed_compaction``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Final

from copilotd import events as ev
from copilotd.events import SessionEvent
from copilotd.providers import ChatMessage, ToolCall
from copilotd.sessions.token_budget import estimate_tokens, message_tokens
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


_CONTEXT_TYPES = frozenset(
    {
        ev.USER_MESSAGE,
        ev.ASSISTANT_MESSAGE,
        ev.TOOL_EXECUTION_COMPLETE,
        ev.SESSION_COMPACTION_COMPLETE,
    }
)


def changes_context(event: SessionEvent) -> bool:
    """Whether ``event`` may change a session's model context (a message, a compaction)."""
    return event.type in _CONTEXT_TYPES


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
    """The most recent messages of one session, oldest first, within ``max_chars``,
    after the latest compaction's summary."""

    def __init__(
        self,
        messages: Sequence[ChatMessage] = (),
        *,
        max_chars: int = MAX_CHARS,
        compaction: SessionEvent | None = None,
    ):
        self._max_chars = max_chars
        self._messages: list[ChatMessage] = []
        self._chars = 0
        self._tokens = 0
        self._bytes = 0
        self.summary = ""
        # The last sequence the summary covers (0: no compaction yet).
        self.summary_covers = 0
        if compaction is not None:
            self.compacted(compaction)
        self.extend(messages)

    @classmethod
    def load(cls, store: Store, session_id: str, *, max_chars: int = MAX_CHARS) -> ContextWindow:
        """Read the session's recent messages, newest first, until the budget is spent
        or the latest completed compaction's range is reached.

        The visible history only: events cut by a rewind are not the model's (a
        compaction cut by a rewind is cut with them).
        """
        newest_first: list[ChatMessage] = []
        chars = 0
        before: int | None = None
        compaction: SessionEvent | None = None
        covers = 0
        while chars < max_chars:
            page = read_visible(
                store, session_id, before=before, limit=LOAD_PAGE_EVENTS, newest_first=True
            )
            for event in page:
                if event.sequence <= covers or chars >= max_chars:
                    chars = max_chars  # done: the summary stands for the rest
                    break
                if compaction is None and ev.completed_compaction(event):
                    compaction = event
                    covers = event.session_compaction_complete.up_to_sequence
                    continue
                for message in context_messages((event,)):
                    newest_first.append(message)
                    chars += len(message.content)
            if len(page) < LOAD_PAGE_EVENTS or page[-1].sequence <= 1:
                break
            before = page[-1].sequence
        newest_first.reverse()
        return cls(newest_first, max_chars=max_chars, compaction=compaction)

    def compacted(self, event: SessionEvent) -> None:
        """Apply a completed compaction: its summary replaces the messages it covers."""
        complete = event.session_compaction_complete
        if complete.up_to_sequence < self.summary_covers:
            return  # an older one, delivered late
        self.summary = complete.summary_content
        self.summary_covers = complete.up_to_sequence
        drop = 0
        while (
            drop < len(self._messages) and self._messages[drop].sequence <= complete.up_to_sequence
        ):
            drop += 1
        self._drop(drop)

    def follow(self, events: Sequence[SessionEvent]) -> bool:
        """Take in newly committed events (messages, compactions); whether any changed it."""
        changed = False
        batch: list[SessionEvent] = []
        for event in events:
            if ev.completed_compaction(event):
                self.extend(context_messages(batch))
                batch.clear()
                self.compacted(event)
                changed = True
            else:
                batch.append(event)
        added = context_messages(batch)
        self.extend(added)
        return changed or bool(added)

    @property
    def messages(self) -> list[ChatMessage]:
        """The messages, oldest first (the window's own list: do not change it)."""
        return self._messages

    @property
    def tokens(self) -> int:
        """The estimated tokens of all the messages (kept up to date, for the budget)."""
        return self._tokens

    @property
    def summary_tokens(self) -> int:
        """The estimated tokens the summary adds to the system message."""
        return estimate_tokens(self.summary) if self.summary else 0

    @property
    def memory_bytes(self) -> int:
        """The memory the cached messages hold (``message_bytes`` summed) and the summary."""
        return self._bytes + (sys.getsizeof(self.summary) if self.summary else 0)

    def extend(self, messages: Iterable[ChatMessage]) -> None:
        """Add newer messages, dropping the oldest ones beyond the budget."""
        for message in messages:
            self._messages.append(message)
            self._chars += len(message.content)
            self._tokens += message_tokens(message)
            self._bytes += message_bytes(message)
        drop = 0
        chars = self._chars
        while drop < len(self._messages) - 1 and (
            chars > self._max_chars
            # A tool result first has its call left out (dropped here, or not
            # loaded: the budget ran out on it): a provider refuses it alone.
            or self._messages[drop].role == "tool"
        ):
            chars -= len(self._messages[drop].content)
            drop += 1
        self._drop(drop)

    def _drop(self, count: int) -> None:
        """Forget the ``count`` oldest messages."""
        for message in self._messages[:count]:
            self._chars -= len(message.content)
            self._tokens -= message_tokens(message)
            self._bytes -= message_bytes(message)
        del self._messages[:count]
