"""A daemon whose providers are a real HTTP server speaking the providers' formats.

``config_text`` points every provider of the config at ``FakeModelServer``;
the constants are the keys, models and limits that config names. The
fixtures that start it are in ``tests/providers/conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from copilot_client import (
    CopilotClient,
    SessionEvent,
    SessionEventType,
)
from copilotd.providers.base import ChatMessage, Role
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import FakeModelServer, Request

T = SessionEventType
KEY_ENV = "COPILOTD_TEST_OPENAI_KEY"
OPENAI_KEY = "sk-test-openai-4f1c9a7e2b"
ANTHROPIC_KEY = "sk-ant-test-8d2e6b0c4a"
AZURE_KEY = "azure-test-key-5b7d1f3e9c"
SESSION_KEY = "sk-session-own-key-7e3a1c5d"
SESSION_TOKEN = "session-bearer-token-2c8f4a6b"
# Backoff alone waits at most this long in these tests; a longer gap between
# two attempts can only come from honouring Retry-After.
MAX_BACKOFF = 0.05
RETRIES = 3
SMALL_WINDOW, SMALL_OUTPUT = 400, 100
COMPLETED_TURN = [
    T.USER_MESSAGE,
    T.ASSISTANT_TURN_START,
    T.ASSISTANT_MESSAGE,
    T.ASSISTANT_USAGE,
    T.ASSISTANT_TURN_END,
]
FAILED_TURN = [T.USER_MESSAGE, T.ASSISTANT_TURN_START, T.SESSION_ERROR, T.ASSISTANT_TURN_END]
# The model of each API in the config below.
MODEL_OF = {"openai": "gpt-test", "anthropic": "claude-test", "azure": "azure-test"}


def config_text(server: FakeModelServer, models_extra: str = "") -> str:
    retry = f"max_retries = {RETRIES}\nretry_initial_delay = 0.01\nretry_max_delay = {MAX_BACKOFF}"
    return f"""
[models]
default = "gpt-test"
{models_extra}

[providers.openai]
type = "openai"
base_url = "{server.url}/v1"
api_key_env = "{KEY_ENV}"
headers = {{ "X-Team" = "copilotd-tests" }}
{retry}
[providers.openai.models]
"gpt-test" = {{}}
"gpt-small" = {{ context_window = {SMALL_WINDOW}, max_output_tokens = {SMALL_OUTPUT} }}

[providers.quick]
type = "openai"
base_url = "{server.url}/v1"
api_key_env = "{KEY_ENV}"
timeout = 1
stream_usage = false
{retry}
models = {{ "gpt-quick" = {{ wire_model = "gpt-test" }} }}

[providers.anthropic]
type = "anthropic"
base_url = "{server.url}"
api_key = "{ANTHROPIC_KEY}"
max_output_tokens = 1000
{retry}
models = ["claude-test"]

[providers.azure]
type = "azure"
base_url = "{server.url}"
api_version = "2024-10-21"
api_key = "{AZURE_KEY}"
{retry}
models = {{ "azure-test" = {{ wire_model = "my-deployment" }} }}

[providers.unkeyed]
type = "openai"
base_url = "{server.url}/v1"
api_key_env = "COPILOTD_TEST_UNSET_VARIABLE"
models = ["gpt-unkeyed"]
"""


DaemonFactory = Callable[..., DaemonProcess]


def connect(daemon: DaemonProcess) -> CopilotClient:
    return CopilotClient(socket_path=daemon.socket_path, auto_start=False)


def conversation(request: Request) -> list[tuple[str, str]]:
    """The messages a request carried, as (role, content), the system message first."""
    sent = [(m["role"], m["content"]) for m in request.messages]
    if request.api == "anthropic" and "system" in request.body:
        sent.insert(0, ("system", request.body["system"]))
    return sent


def as_chat(request: Request) -> list[ChatMessage]:
    return [ChatMessage(cast(Role, role), content) for role, content in conversation(request)]


def streamed_text(events: list[SessionEvent], user_message_id: str | None) -> str:
    return "".join(
        e.data.delta_content or ""
        for e in events
        if e.type is T.ASSISTANT_MESSAGE_DELTA and e.data.user_message_id == user_message_id
    )
