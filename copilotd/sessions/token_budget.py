"""Fitting a session's history into a model's context budget.

The request of a turn is the system message, then the history (user and
assistant messages, oldest first), whose last message is the newest user
message. When its estimated size exceeds the budget, the oldest messages are
left out first; the system message and the newest user message always stay,
and the kept history never starts with an assistant message.

Token counts are estimates, because no provider offers its tokenizer
offline (OpenAI's tiktoken downloads its tables at run time; Anthropic
counts tokens through an API call): one token per 3 bytes of UTF-8, rounded
up, plus 4 per message for the role and framing. Real tokenizers average
about 4 bytes per token on English text and fewer on code and non-Latin
scripts, so the estimate errs on the high side: a trimmed request fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from copilotd.providers import ChatMessage

BYTES_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)


def message_tokens(message: ChatMessage) -> int:
    tokens = estimate_tokens(message.content) + MESSAGE_OVERHEAD_TOKENS
    for call in message.tool_calls:
        tokens += estimate_tokens(call.name) + estimate_tokens(call.arguments_json)
    return tokens


@dataclass(frozen=True, slots=True)
class Truncation:
    """What was left out of a request (counts include the system message)."""

    token_limit: int
    pre_tokens: int
    pre_messages: int
    post_tokens: int
    post_messages: int
    first_kept_sequence: int

    @property
    def tokens_removed(self) -> int:
        return self.pre_tokens - self.post_tokens

    @property
    def messages_removed(self) -> int:
        return self.pre_messages - self.post_messages


@dataclass(frozen=True, slots=True)
class FittedRequest:
    messages: list[ChatMessage]
    # Estimated size of ``messages``.
    tokens: int
    # Set when messages were left out.
    truncation: Truncation | None = None


def fit_to_budget(
    system: ChatMessage,
    history: Sequence[ChatMessage],
    budget: int | None,
    *,
    history_tokens: int | None = None,
) -> FittedRequest:
    """``[system, *history]``, without its oldest messages when over ``budget`` tokens.

    ``budget`` None means no limit. ``history`` ends with the newest user
    message, which is kept even when it alone is over the budget (the
    provider then decides; our estimate is high, so it may well fit).
    ``history_tokens``, the estimate of the whole history when the caller
    keeps it up to date, spares a pass over it: then only the messages kept
    when trimming are measured.
    """
    system_cost = message_tokens(system)
    if history_tokens is None:
        history_tokens = sum(map(message_tokens, history))
    total = system_cost + history_tokens
    if budget is None or total <= budget or len(history) <= 1:
        return FittedRequest([system, *history], total)
    # Kept whatever the budget: the newest user message and the tool rounds
    # answering it so far (a call without its result is refused).
    first_kept = len(history) - 1
    while first_kept > 0 and history[first_kept].role != "user":
        first_kept -= 1
    newest_user = first_kept
    used = system_cost + sum(map(message_tokens, history[first_kept:]))
    while first_kept > 0:
        cost = message_tokens(history[first_kept - 1])
        if used + cost > budget:
            break
        first_kept -= 1
        used += cost
    # A history must begin with the user: drop an answer whose question is
    # gone, and tool results whose call is.
    while first_kept < newest_user and history[first_kept].role != "user":
        used -= message_tokens(history[first_kept])
        first_kept += 1
    kept = list(history[first_kept:])
    return FittedRequest(
        [system, *kept],
        used,
        Truncation(
            token_limit=budget,
            pre_tokens=total,
            pre_messages=len(history) + 1,
            post_tokens=used,
            post_messages=len(kept) + 1,
            first_kept_sequence=kept[0].sequence,
        ),
    )
