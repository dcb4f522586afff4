"""A memory budget for the model contexts of sessions that are not running a turn.

A session's context window (``context_window.ContextWindow``, up to 512 KiB of
text) stays cached after its turn so that the session's next turn need not
read its history again. The daemon keeps up to ``MAX_IDLE_STATES`` idle
sessions in memory, so counting sessions alone would allow half a gigabyte
of cached text. ``IdleContexts`` also bounds the bytes: it counts the windows
of idle sessions in least-recently-used order and drops the oldest ones
beyond its budget (the session's ``context`` becomes None; its next turn
loads the window from the store again, as after a restart).

A window is counted while it cannot change: from the end of a turn until
the next turn takes it. Every operation is O(1), apart from dropping, which
happens at most once per window counted.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, Protocol

from copilotd.sessions.context_window import ContextWindow

# Sixty-four sessions with a window at its fullest (512 KiB of ASCII text),
# or many more with shorter histories.
DEFAULT_BUDGET_BYTES: Final = 64 * 1024 * 1024


class HoldsContext(Protocol):
    """What owns a cached window: the session's in-memory state."""

    context: ContextWindow | None


class IdleContexts:
    """The windows of idle sessions, least recently used first, within ``budget_bytes``."""

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._windows: OrderedDict[str, tuple[HoldsContext, int]] = OrderedDict()
        self._bytes = 0
        self.dropped = 0

    @property
    def bytes(self) -> int:
        """The memory the counted windows hold."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._windows)

    def park(self, session_id: str, holder: HoldsContext) -> None:
        """The session went idle: count its window as the most recently used one.

        Then drop the least recently used windows until the rest fit. A window
        larger than the whole budget is dropped at once, sparing the others.
        """
        self.take(session_id)
        window = holder.context
        if window is None:
            return
        size = window.memory_bytes
        if size > self.budget_bytes:
            holder.context = None
            self.dropped += 1
            return
        self._windows[session_id] = (holder, size)
        self._bytes += size
        while self._bytes > self.budget_bytes:
            _, (oldest, oldest_size) = self._windows.popitem(last=False)
            oldest.context = None
            self._bytes -= oldest_size
            self.dropped += 1

    def take(self, session_id: str) -> None:
        """The session's window is in use again (or gone): stop counting it here."""
        entry = self._windows.pop(session_id, None)
        if entry is not None:
            self._bytes -= entry[1]
