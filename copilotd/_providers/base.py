"""The model provider interface: one streaming call per turn.

A provider turns a ``ChatRequest`` into an async stream of ``TextDelta``
pieces and, at the end, one ``Usage``. Cancelling the consuming task must stop
the underlying request promptly (providers do their network I/O inside the
generator, so ``CancelledError`` reaches it at its next await). Failures are
raised as ``ProviderError`` with a category the turn engine records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: Sequence[ChatMessage]
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int


ChatChunk = TextDelta | Usage


class ProviderError(Exception):
    """A model call failed.

    Args:
        message: what went wrong, for the user.
        error_type: category recorded in session.error (e.g. "provider",
            "authentication", "rate_limit", "timeout").
        status_code: the provider's HTTP status, when there was one.
    """

    def __init__(self, message: str, *, error_type: str = "provider", status_code: int = 0):
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.status_code = status_code


class ModelProvider(ABC):
    """Something that answers chat requests, streaming."""

    name: str

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        """Stream the answer to ``request``: text deltas, then one ``Usage``."""

    async def aclose(self) -> None:  # noqa: B027 - most providers hold nothing to release
        """Release connections; the provider is not used afterwards."""
