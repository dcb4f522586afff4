"""The model provider interface: one streaming call per turn.

A provider turns a ``ChatRequest`` into an async stream of ``TextDelta``
pieces and, at the end, at most one ``Usage``. Cancelling the consuming task
must stop the underlying request promptly (providers do their network I/O
inside the generator, so ``CancelledError`` reaches it at its next await and
the HTTP stream is closed on the way out). Failures are raised as
``ProviderError`` with a category the turn engine records, and whether
trying again may help.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant", "tool"]
# What a request is for: answering the conversation, or summarising part of
# it for a compaction (providers send both alike; the offline model answers
# the second by its own rule).
Task = Literal["answer", "summarize"]

# How a conversation's summary reaches the model after a compaction: a
# section at the end of the system message, so that the history still starts
# with a user message, as every provider requires. The offline model finds
# the summary it was given by this heading.
SUMMARY_HEADING = "Summary of the earlier conversation (it replaces the messages it covers):"


def with_summary(system: str, summary: str) -> str:
    """The system message text carrying ``summary`` (unchanged when there is none)."""
    return f"{system}\n\n{SUMMARY_HEADING}\n{summary}" if summary else system


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's call of a client's tool (also a chunk of a stream)."""

    call_id: str
    name: str
    # The arguments as JSON text, as the model wrote them.
    arguments_json: str


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: its name, what it does and its JSON schema (text)."""

    name: str
    description: str
    parameters_json_schema: str


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the history.

    An assistant message may carry ``tool_calls`` (its content then may be
    empty); each is answered by a ``tool`` message naming the call in
    ``tool_call_id``, before the next user or assistant message.
    """

    role: Role
    content: str
    # Sequence number of the stored event it comes from (0: not stored).
    sequence: int = 0
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One model call: ``messages`` start with the system message.

    Attributes:
        model: the model name the provider knows (the wire model).
        messages: system message first, then the history, oldest first.
        max_output_tokens: largest answer to ask for (None: the provider's default).
        tools: the tools the model may call (the stream then may yield ``ToolCall``s).
        task: ``"summarize"`` for a compaction's summary, else ``"answer"``.
    """

    model: str
    messages: Sequence[ChatMessage]
    max_output_tokens: int | None = None
    tools: Sequence[ToolSpec] = ()
    task: Task = "answer"


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call used, as the provider reported them.

    A count the server did not send is None (not 0): the turn engine then
    estimates it and marks the recorded usage as estimated.
    """

    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # The provider's id of the response, when it gave one.
    call_id: str = ""


ChatChunk = TextDelta | ToolCall | Usage


def empty_answer_error(label: str) -> ProviderError:
    """The failure for a stream that ended with no text, no tool call and no finish reason.

    Such a stream is no answer: llama.cpp's server sends one (``200 OK``, an
    empty body) when the request is longer than its context. Recording it as
    an empty answer would hide the failure, so it is retried like a dropped
    connection and, when retries do not help, ends the turn in session.error.
    """
    return ProviderError(
        f"{label} answered with an empty stream (no text, no tool call, no finish reason); "
        "a local server does this when the conversation is longer than its context: "
        "give the model a context_window (copilotd then trims the history to fit) or "
        "start the server with a larger context",
        error_type="empty_answer",
        retryable=True,
    )


class ProviderError(Exception):
    """A model call failed.

    Args:
        message: what went wrong, for the user (the provider's own words
            where there are some).
        error_type: category recorded in session.error: "authentication",
            "rate_limit", "timeout", "connection", "configuration",
            "empty_answer" or "provider".
        status_code: the provider's HTTP status, when there was one.
        retryable: whether the same request may succeed later (429, 5xx,
            timeouts, dropped connections).
        retry_after: seconds the provider asked to wait (``Retry-After``).
    """

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "provider",
        status_code: int = 0,
        retryable: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after = retry_after
        # Requests made before giving up; set by the retry layer.
        self.attempts = 1


class ModelProvider(ABC):
    """Something that answers chat requests, streaming."""

    name: str
    # What metrics label its figures with. A session's own provider is named
    # after the session, and session ids in labels would make a series set
    # per session, so it is labelled by its type instead.
    metrics_label: str = ""
    # False for a provider whose answers cost no tokens (the offline model):
    # its turns record no assistant.usage.
    counts_tokens: bool = True

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk]:
        """Stream the answer to ``request``: text deltas, tool calls, then at most one ``Usage``."""

    async def warm_up(self) -> None:  # noqa: B027 - most providers have nothing to prepare
        """Prepare for the first request (e.g. load an SDK); errors are left to ``stream``."""

    async def aclose(self) -> None:  # noqa: B027 - most providers hold nothing to release
        """Release connections; the provider is not used afterwards."""
