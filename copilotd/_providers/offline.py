"""The offline model: no network, deterministic, and honest about what it is.

It exists so that copilotd works out of the box and so tests can check that
a resumed session really carries its history: asked anything, it repeats the
prompt and recalls the earlier user messages it was given as context.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from copilotd._providers.base import ChatChunk, ChatRequest, ModelProvider, TextDelta

RECALL_LIMIT = 5
QUOTE_LIMIT = 120
DELTA_COUNT = 6


def _quote(text: str) -> str:
    line = " ".join(text.split())
    if len(line) > QUOTE_LIMIT:
        line = line[: QUOTE_LIMIT - 1] + "…"
    return f'"{line}"'


def compose_reply(request: ChatRequest) -> str:
    user_messages = [m.content for m in request.messages if m.role == "user"]
    prompt = user_messages[-1] if user_messages else ""
    earlier = user_messages[:-1]
    parts = [
        f"This is the offline model of copilotd (no model provider is configured, so it "
        f"answers for every model name, {request.model!r} included).",
        f"You said: {_quote(prompt)}.",
    ]
    if earlier:
        recalled = "; ".join(_quote(m) for m in earlier[-RECALL_LIMIT:])
        parts.append(
            f"We were discussing what you said earlier in this session "
            f"({len(earlier)} earlier message{'s' if len(earlier) != 1 else ''}): {recalled}."
        )
    else:
        parts.append("There are no earlier messages from you in this session.")
    return " ".join(parts)


def split_into_deltas(text: str, count: int = DELTA_COUNT) -> list[str]:
    """Split ``text`` into about ``count`` pieces on word boundaries; joined, they are ``text``."""
    words = text.split(" ")
    step = max(1, -(-len(words) // count))
    pieces = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
    return [piece if i == 0 else " " + piece for i, piece in enumerate(pieces)]


class OfflineProvider(ModelProvider):
    """Answers every model name locally.

    Args:
        delta_delay: seconds to wait before each delta, to make a turn last
            long enough to watch or abort (0 by default).
    """

    name = "offline"
    counts_tokens = False

    def __init__(self, *, delta_delay: float = 0.0) -> None:
        self._delta_delay = delta_delay

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk]:
        reply = compose_reply(request)
        for piece in split_into_deltas(reply):
            # Yield control between deltas even without a delay, as a network
            # provider would, so that aborts and other sessions get a turn.
            await asyncio.sleep(self._delta_delay)
            yield TextDelta(piece)
