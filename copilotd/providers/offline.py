"""The offline model: no network, deterministic, and honest about what it is.

It exists so that copilotd works out of the box and so tests can check that
a resumed session really carries its history: asked anything, it repeats the
prompt and recalls the earlier user messages it was given as context.

It calls tools by a fixed rule, so that tools work with no network: every
line of the prompt of the form ``call NAME {JSON object}``, where NAME is a
tool the request declares, becomes one call of NAME with those arguments (in
the order of the lines; no text then). Given the tools' results, it answers
with them: ``NAME returned: "result"``, one per call.

It summarises by a fixed rule too, so that compaction works (and is tested)
with no network: asked for a summary (``task="summarize"``), it keeps every
line of the request that holds ``remember: FACT`` (a user's marked line, or
a line of the previous summary, which is made of them), as
``remember: FACT``, first occurrence first, without repeats, within the
request's ``max_output_tokens`` (at 3 bytes a token; the oldest go first
beyond it), and answers "Nothing was marked to remember." when there is
none. Answering, it quotes the summary its system message carries.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from operator import attrgetter
from random import getrandbits

from copilotd.providers.base import (
    SUMMARY_HEADING,
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ModelProvider,
    TextDelta,
    ToolCall,
)

RECALL_LIMIT = 5
QUOTE_LIMIT = 120
DELTA_COUNT = 6
_QUOTE_SCAN = 4 * QUOTE_LIMIT
_role = attrgetter("role")
_CALL_LINE = re.compile(r"^\s*call\s+([A-Za-z0-9_-]{1,64})\s+(\{.*\})\s*$")
# A transcript line of a user's message starts with "user: " (see
# sessions/compaction.py); a previous summary's lines start with "remember:".
_REMEMBER = re.compile(r"^\s*(?:user:\s*)?remember:\s*(\S.*?)\s*$", re.IGNORECASE)
NOTHING_TO_REMEMBER = "Nothing was marked to remember."
# Bytes of a summary per token of max_output_tokens (the daemon's estimate).
_SUMMARY_BYTES_PER_TOKEN = 3


def summarize_remembered(request: ChatRequest) -> str:
    """The offline model's summary (the module's rule)."""
    kept: dict[str, None] = {}
    for message in request.messages[1:]:
        for line in message.content.splitlines():
            match = _REMEMBER.match(line)
            if match is not None:
                kept.setdefault(f"remember: {match[1]}", None)
    lines = list(kept)
    if request.max_output_tokens:
        limit = request.max_output_tokens * _SUMMARY_BYTES_PER_TOKEN
        while lines and len("\n".join(lines).encode()) > limit:
            del lines[0]
    return "\n".join(lines) or NOTHING_TO_REMEMBER


def _summary_given(request: ChatRequest) -> str:
    if not request.messages or request.messages[0].role != "system":
        return ""
    _, found, summary = request.messages[0].content.partition(SUMMARY_HEADING)
    return summary.strip() if found else ""


def tool_calls_asked(request: ChatRequest) -> list[ToolCall]:
    """The calls the prompt asks for (see the module's rule); none once answered."""
    if not request.tools or not request.messages or request.messages[-1].role != "user":
        return []
    declared = {tool.name for tool in request.tools}
    calls = []
    for line in request.messages[-1].content.splitlines():
        match = _CALL_LINE.match(line)
        if match is None or match[1] not in declared:
            continue
        try:
            arguments = json.loads(match[2])
        except ValueError:
            continue
        if isinstance(arguments, dict):
            call_id = f"call_{getrandbits(64):016x}"
            calls.append(ToolCall(call_id, match[1], json.dumps(arguments)))
    return calls


def _results_reply(request: ChatRequest) -> str | None:
    """The answer after the latest round's tool results, if the history ends with them."""
    results: list[ChatMessage] = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        results.append(message)
    if not results:
        return None
    names = {
        call.call_id: call.name
        for message in request.messages
        if message.role == "assistant"
        for call in message.tool_calls
    }
    return " ".join(
        f"{names.get(result.tool_call_id, 'the tool')} returned: {_quote(result.content)}."
        for result in reversed(results)
    )


def _quote(text: str) -> str:
    # Only the start of a long message can show: collapse the whitespace of
    # that (a prefix of the whole, collapsed), unless it comes out short.
    line = " ".join(text[:_QUOTE_SCAN].split())
    if len(line) <= QUOTE_LIMIT and len(text) > _QUOTE_SCAN:
        line = " ".join(text.split())
    if len(line) > QUOTE_LIMIT:
        line = line[: QUOTE_LIMIT - 1] + "…"
    return f'"{line}"'


def compose_reply(request: ChatRequest) -> str:
    # From the end: the prompt and the few earlier messages it quotes, without
    # going through the whole context, which holds hundreds of messages in a
    # long session; counting user messages is one pass in C.
    recent: list[str] = []
    for message in reversed(request.messages):
        if message.role == "user":
            recent.append(message.content)
            if len(recent) > RECALL_LIMIT:
                break
    prompt = recent[0] if recent else ""
    earlier_count = max(0, list(map(_role, request.messages)).count("user") - 1)
    parts = [
        f"This is the offline model of copilotd (no model provider is configured, so it "
        f"answers for every model name, {request.model!r} included).",
        f"You said: {_quote(prompt)}.",
    ]
    if earlier_count:
        recalled = "; ".join(_quote(m) for m in reversed(recent[1:]))
        parts.append(
            f"We were discussing what you said earlier in this session "
            f"({earlier_count} earlier message{'s' if earlier_count != 1 else ''}): {recalled}."
        )
    else:
        parts.append("There are no earlier messages from you in this session.")
    summary = _summary_given(request)
    if summary:
        # Whole, not quoted: tests check that a fact survives many compactions.
        parts.append(f"The summary I was given: {' | '.join(summary.splitlines())}.")
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
        if request.task == "summarize":
            if self._delta_delay:
                await asyncio.sleep(self._delta_delay)
            yield TextDelta(summarize_remembered(request))
            return
        calls = tool_calls_asked(request)
        if calls:
            for call in calls:
                yield call
            return
        reply = _results_reply(request) or compose_reply(request)
        for piece in split_into_deltas(reply):
            # Without a delay the model is instantaneous: its deltas are ready
            # at once (as a fast provider's buffered chunks are), so they reach
            # subscribers together instead of costing a loop iteration and a
            # stream message each.
            if self._delta_delay:
                await asyncio.sleep(self._delta_delay)
            yield TextDelta(piece)
