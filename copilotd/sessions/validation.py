"""Checks on what callers send, with messages that say how to fix the input."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from copilotd.errors import InvalidArgumentError, Reason
from copilotd.limits import MAX_LABEL_BYTES, MAX_PAGE_SIZE, SESSION_ID_MAX_LENGTH

SESSION_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
SESSION_ID_RULE: Final = (
    f"1 to {SESSION_ID_MAX_LENGTH} characters from A-Z a-z 0-9 . _ : @ -, "
    "starting with a letter or a digit"
)

MESSAGE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class EnumType(Protocol):
    """What generated protobuf enum wrappers offer."""

    def values(self) -> Sequence[int]: ...
    def items(self) -> Sequence[tuple[str, int]]: ...


def check_session_id(session_id: str) -> str:
    if not session_id:
        raise InvalidArgumentError(
            f"session_id is empty; a session id is {SESSION_ID_RULE}",
            Reason.ERROR_REASON_INVALID_SESSION_ID,
        )
    if SESSION_ID_PATTERN.fullmatch(session_id) is None:
        shown = session_id if len(session_id) <= 40 else session_id[:40] + "…"
        raise InvalidArgumentError(
            f"invalid session_id {shown!r} ({len(session_id)} characters): "
            f"a session id is {SESSION_ID_RULE}",
            Reason.ERROR_REASON_INVALID_SESSION_ID,
        )
    return session_id


def check_prompt(prompt: str, max_bytes: int) -> str:
    if not prompt.strip():
        raise InvalidArgumentError(
            "prompt is empty; send the text of the user's message",
            Reason.ERROR_REASON_EMPTY_PROMPT,
        )
    size = len(prompt.encode("utf-8"))
    if size > max_bytes:
        raise InvalidArgumentError(
            f"prompt is {size} bytes, over the limit of {max_bytes} bytes; shorten it or "
            "start copilotd with a larger --max-prompt-bytes",
            Reason.ERROR_REASON_PROMPT_TOO_LARGE,
        )
    return prompt


def check_message_id(message_id: str) -> str:
    """A client-chosen id for a user message (empty: the daemon picks one)."""
    if message_id and MESSAGE_ID_PATTERN.fullmatch(message_id) is None:
        shown = message_id if len(message_id) <= 40 else message_id[:40] + "…"
        raise InvalidArgumentError(
            f"invalid message_id {shown!r} ({len(message_id)} characters): a message id is "
            "1 to 64 characters from A-Z a-z 0-9 . _ : - (leave it empty to let copilotd "
            "choose one)"
        )
    return message_id


def page_size(requested: int, default: int) -> int:
    """0 means the default; sizes above the maximum are capped (as AIP-158 suggests)."""
    if requested == 0:
        return default
    return min(requested, MAX_PAGE_SIZE)


def check_label(value: str, field: str, max_bytes: int = MAX_LABEL_BYTES) -> str:
    """A free-form short string (a model name, a source tag, an abort reason)."""
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise InvalidArgumentError(
            f"{field} is {size} bytes, over the limit of {max_bytes} bytes; shorten it"
        )
    return value


def check_enum(value: int, enum: EnumType, field: str) -> int:
    """Refuse enum values this daemon does not know, rather than guess what they meant.

    Proto3 enums are open: a newer client can send a value added after this
    daemon was built. Doing something else than what it asked for (say,
    queueing a message it wanted to run now) would be worse than saying no.
    """
    if value not in enum.values():
        known = ", ".join(f"{name} ({number})" for name, number in enum.items())
        raise InvalidArgumentError(
            f"{field} has the unknown value {value}; this copilotd knows {known}. "
            "Upgrade copilotd or send one of those"
        )
    return value


# The range protobuf's JSON mapping (and so an export) can represent.
MIN_SECONDS: Final = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_SECONDS: Final = 253_402_300_799  # 9999-12-31T23:59:59Z


def is_valid_time(stamp: Timestamp) -> bool:
    """Whether ``stamp`` is a time a calendar holds (years 1 to 9999, nanos in range)."""
    return MIN_SECONDS <= stamp.seconds <= MAX_SECONDS and 0 <= stamp.nanos < 1_000_000_000


def check_time(stamp: Timestamp, field: str) -> int:
    """A time a caller sent, in nanoseconds since the epoch."""
    if not is_valid_time(stamp):
        raise InvalidArgumentError(
            f"{field} is not a valid time (seconds={stamp.seconds}, nanos={stamp.nanos}): it "
            "must lie between 0001-01-01 and 9999-12-31 with nanos from 0 to 999999999"
        )
    return stamp.ToNanoseconds()
