"""Size and page limits, and byte-bounded batching of answers.

Answers that carry events or sessions stay well under gRPC's message size limit.

A session may hold any number of events as large as a prompt may be, so a
page of events bounded only by count (up to 1000) can outweigh the message
limit (``max_message_bytes``, at least 8 MiB), and an answer over it is lost
to the caller with gRPC's RESOURCE_EXHAUSTED: a history that can never be
read, a subscriber that can never catch up. The same holds for a page of
sessions, whose metadata carries their system messages. So every such
answer (ListEvents and ListSessions pages, the ResumeSession tail,
StreamEvents batches) is bounded by bytes as well as by count: items are
added while their serialized sizes sum to at most ``PAGE_BYTES``. One item
larger than that still travels alone: an event or a session's metadata is at
most a prompt (or an answer) plus short fields, and the message limit is
four times the prompt limit plus 1 MiB, so it fits with whatever else the
answer holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Final, TypeVar

from google.protobuf.message import Message

# Page sizes are part of the wire contract, so the client defines them.
from copilot_client.wire import DEFAULT_EVENT_PAGE_SIZE, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

__all__ = [
    "DEFAULT_EVENT_PAGE_SIZE",
    "DEFAULT_MAX_PROMPT_BYTES",
    "DEFAULT_PAGE_SIZE",
    "MAX_LABEL_BYTES",
    "MAX_PAGE_SIZE",
    "MESSAGE_HEADROOM_BYTES",
    "MIN_MESSAGE_BYTES",
    "PAGE_BYTES",
    "SESSION_ID_MAX_LENGTH",
    "byte_batches",
    "max_message_bytes",
]

SESSION_ID_MAX_LENGTH: Final = 128
DEFAULT_MAX_PROMPT_BYTES: Final = 1024 * 1024
# gRPC refuses a message above its size limit before any of our code runs,
# with its own RESOURCE_EXHAUSTED and no copilot-error-reason. The limit is
# set well above the largest valid request (a prompt or system message at
# its limit, plus a few short fields), so that a prompt over its limit, even
# several times over, reaches check_prompt and gets a message that says how
# to fix it. Only a request beyond this bound is refused by gRPC itself.
MIN_MESSAGE_BYTES: Final = 8 * 1024 * 1024
MESSAGE_HEADROOM_BYTES: Final = 1024 * 1024

# Short labels and names that are stored with events or sessions. Generous for
# their purpose, small enough that no caller can bloat the store through them.
MAX_LABEL_BYTES: Final = 1024


def max_message_bytes(max_prompt_bytes: int) -> int:
    """The largest gRPC message the daemon reads or writes (see MIN_MESSAGE_BYTES)."""
    return max(MIN_MESSAGE_BYTES, 4 * max_prompt_bytes + MESSAGE_HEADROOM_BYTES)


ItemT = TypeVar("ItemT", bound=Message)

# A quarter of the smallest message limit. With the default prompt limit
# (1 MiB), a ResumeSession answer (metadata with a system message, plus the
# tail) then stays under 4 MiB, the receive limit gRPC libraries default to,
# so clients in other languages read every answer without raising theirs.
# Larger pages would save little: a round trip costs far less than 2 MiB.
PAGE_BYTES: Final = MIN_MESSAGE_BYTES // 4


def byte_batches(events: Sequence[ItemT], max_bytes: int = PAGE_BYTES) -> Iterator[Sequence[ItemT]]:
    """``events`` (or any messages) in order, in runs that weigh at most
    ``max_bytes`` (or hold one).

    The common case, a batch within the budget, is yielded as it is.
    """
    start, weight = 0, 0
    for index, event in enumerate(events):
        size = event.ByteSize()
        if weight + size > max_bytes and index > start:
            yield events[start:index]
            start, weight = index, 0
        weight += size
    if start < len(events):
        yield events[start:] if start else events
