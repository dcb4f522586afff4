"""Checks on what callers send, with messages that say how to fix the input."""

from __future__ import annotations

import re
from typing import Final

from copilotd._errors import InvalidArgumentError, Reason

SESSION_ID_MAX_LENGTH: Final = 128
SESSION_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
SESSION_ID_RULE: Final = (
    f"1 to {SESSION_ID_MAX_LENGTH} characters from A-Z a-z 0-9 . _ : @ -, "
    "starting with a letter or a digit"
)

DEFAULT_MAX_PROMPT_BYTES: Final = 1024 * 1024
DEFAULT_PAGE_SIZE: Final = 50
DEFAULT_EVENT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000


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


def page_size(requested: int, default: int) -> int:
    """0 means the default; sizes above the maximum are capped (as AIP-158 suggests)."""
    if requested == 0:
        return default
    return min(requested, MAX_PAGE_SIZE)
