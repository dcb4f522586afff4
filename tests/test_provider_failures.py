"""What real OpenAI-compatible servers do that the official APIs do not, against a real daemon.

llama.cpp's server answers ``200 OK`` with an empty stream when a request is
longer than its context; FastAPI-based servers (vLLM, LiteLLM) put their
error in ``{"detail": ...}``; some servers leave token counts out of their
usage. ``FakeModelServer`` speaks each of these on the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from copilot_client import CopilotClient, SessionEventType, SessionFailedError
from copilotd.providers.http_errors import body_message
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import FakeModelServer, Reply, stream

T = SessionEventType
RETRIES = 2
MODEL_OF = {"openai": "gpt-test", "anthropic": "claude-test"}


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as running:
        yield running


@pytest.fixture
async def client(short_tmp: Path, server: FakeModelServer) -> AsyncIterator[CopilotClient]:
    retry = f"max_retries = {RETRIES}\nretry_initial_delay = 0.01\nretry_max_delay = 0.02"
    config = short_tmp / "config.toml"
    config.write_text(
        f"""
[models]
default = "gpt-test"

[providers.openai]
type = "openai"
base_url = "{server.url}/v1"
{retry}
models = ["gpt-test"]

[providers.anthropic]
type = "anthropic"
base_url = "{server.url}"
{retry}
models = ["claude-test"]
"""
    )
    daemon = DaemonProcess(short_tmp, ["--config", str(config)]).start()
    try:
        async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as connected:
            yield connected
    finally:
        daemon.kill()


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_an_empty_stream_is_retried_and_then_a_session_error(
    client: CopilotClient, server: FakeModelServer, api: str
) -> None:
    session = await client.create_session(model=MODEL_OF[api])
    # Retried like a dropped connection: the retry's answer is the turn's answer.
    server.script(Reply(empty=True), stream("After", " all"))
    answer = await session.send_and_wait("First")
    assert answer is not None and answer.data.content == "After all"
    assert len(server.requests) == 2

    server.script(*[Reply(empty=True)] * (RETRIES + 1))
    with pytest.raises(SessionFailedError) as failed:
        await session.send_and_wait("Second")
    event = failed.value.event
    assert event.data.error_type == "empty_answer"
    assert event.data.attempts == RETRIES + 1
    assert "empty stream" in (event.data.message or "")
    assert "context_window" in (event.data.message or "")  # what to do about it
    assert len(server.requests) == 2 + RETRIES + 1
    turn = [e.type for e in (await session.get_messages())[-4:]]
    # No empty assistant.message is recorded as if it were an answer.
    assert turn == [T.USER_MESSAGE, T.ASSISTANT_TURN_START, T.SESSION_ERROR, T.ASSISTANT_TURN_END]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"detail": "Invalid API key"}, "Invalid API key"),
        ({"error": "model 'x' not found, try pulling it first"}, "model 'x' not found"),
        (
            {"detail": [{"loc": ["body", "messages"], "msg": "field required"}]},
            "field required",
        ),
        ({"error": {"message": "Quota used up", "type": "insufficient_quota"}}, "Quota used up"),
    ],
)
async def test_error_bodies_of_common_shapes_reach_the_user(
    client: CopilotClient, server: FakeModelServer, body: dict[str, Any], words: str
) -> None:
    session = await client.create_session()
    server.script(Reply(status=401, body=body))
    with pytest.raises(SessionFailedError) as failed:
        await session.send_and_wait("Hello?")
    message = failed.value.event.data.message or ""
    assert f"answered 401 Unauthorized: {words}" in message
    assert "Error code" not in message


def test_an_error_body_in_no_known_shape_is_shown_as_it_came() -> None:
    assert body_message({"error": {"code": 17}}) == ""  # then the JSON itself is shown
    assert body_message({"errors": [{"message": "one"}, {"title": "two"}]}) == "one; two"


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("sent", [(12, None), (None, 7), (12, 7)])
async def test_token_counts_the_server_did_not_send_are_marked_estimated(
    client: CopilotClient, server: FakeModelServer, api: str, sent: tuple[int | None, int | None]
) -> None:
    session = await client.create_session(model=MODEL_OF[api])
    server.script(stream("Four", " words", " of", " answer", usage=sent))
    await session.send_and_wait("Count me")
    usage = [e for e in await session.get_messages() if e.type is T.ASSISTANT_USAGE][-1]
    reported_input, reported_output = sent
    assert usage.data.estimated is (reported_input is None or reported_output is None)
    if reported_input is not None:
        assert usage.data.input_tokens == reported_input
    if reported_output is not None:
        assert usage.data.output_tokens == reported_output
    assert (usage.data.input_tokens or 0) > 0 and (usage.data.output_tokens or 0) > 0
