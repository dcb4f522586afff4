"""A session's own provider (its endpoint and secret), the secrets that must never
reach the store, the log or another server, and the limit on an answer's size.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from copilot_client import (
    CopilotClient,
    InvalidArgumentError,
    ProviderConfig,
    ProviderSecretRequiredError,
    SessionFailedError,
)
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import FakeModelServer, Reply, error, stream
from tests.support.model_providers import (
    ANTHROPIC_KEY,
    MODEL_OF,
    OPENAI_KEY,
    SESSION_KEY,
    SESSION_TOKEN,
    DaemonFactory,
    T,
    connect,
    conversation,
)
from tests.support.session_events import types

# -- a session's own provider, and secrets ----------------------------------------


def assert_nowhere(secrets: list[str], daemon: DaemonProcess) -> None:
    """No secret in any file of the data directory (LMDB's data.mdb included) or in the log."""
    files = [path for path in daemon.data_dir.rglob("*") if path.is_file()]
    assert any(path.name == "data.mdb" for path in files)
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret} found in {path}"
    log = "".join(daemon.output)
    for secret in secrets:
        assert secret not in log, f"{secret} found in the daemon's log"


async def test_own_provider_secrets_never_reach_the_store_or_the_log(
    start_daemon: DaemonFactory, server: FakeModelServer
) -> None:
    daemon = start_daemon(args=("--log-level", "DEBUG"))
    own_key = ProviderConfig(
        type="openai", base_url=f"{server.url}/v1", api_key=SESSION_KEY, wire_model="their-model"
    )
    own_token = {
        "type": "anthropic",
        "base_url": server.url,
        "bearer_token": SESSION_TOKEN,
        "max_output_tokens": 500,
    }
    assert SESSION_KEY not in repr(own_key)
    secrets = [SESSION_KEY, SESSION_TOKEN, OPENAI_KEY, ANTHROPIC_KEY]
    async with connect(daemon) as client:
        keyed = await client.create_session(session_id="own-key", model="mine", provider=own_key)
        assert keyed.metadata.provider == ProviderConfig(
            type="openai",
            base_url=f"{server.url}/v1",
            wire_model="their-model",
            credential="api_key",
        )
        await keyed.send_and_wait("Hello over my own key")
        # A retried failure is logged with the provider's words: the log hides the key.
        server.script(error(500, f"Internal error for key {SESSION_KEY}"), stream("Retried"))
        retried = await keyed.send_and_wait("Try again")
        assert retried is not None and retried.data.content == "Retried"
        tokened = await client.create_session(
            session_id="own-token", model="claude-mine", provider=own_token
        )
        await tokened.send_and_wait("Hello over my own token")
        # Provider messages that quote a secret are stored and logged without it.
        server.script(error(401, f"Incorrect API key provided: {SESSION_KEY}"))
        with pytest.raises(SessionFailedError) as failed:
            await keyed.send_and_wait("Once more")
        assert "provided: [redacted]" in (failed.value.event.data.message or "")
        configured = await client.create_session(session_id="configured", model="gpt-test")
        server.script(error(403, f"Keys {OPENAI_KEY} and {ANTHROPIC_KEY} are not allowed"))
        with pytest.raises(SessionFailedError):
            await configured.send_and_wait("Configured")
        listed = {s.session_id: s for s in await client.list_sessions()}
        assert listed["own-token"].provider == ProviderConfig(
            type="anthropic", base_url=server.url, max_output_tokens=500, credential="bearer_token"
        )

    # The secrets were really used...
    requests = server.requests
    assert requests[0].headers["authorization"] == f"Bearer {SESSION_KEY}"
    assert requests[0].body["model"] == "their-model"
    assert requests[3].headers["authorization"] == f"Bearer {SESSION_TOKEN}"
    assert requests[3].body["max_tokens"] == 500
    # ...and are nowhere on disk or in the (debug-level) log after a clean stop.
    assert daemon.terminate() == 0
    assert any("DEBUG" in line for line in daemon.output)
    assert any("Internal error for key [redacted]; retry 1 of 3" in line for line in daemon.output)
    assert_nowhere(secrets, daemon)

    daemon.start()
    async with connect(daemon) as client:
        keyed = await client.resume_session("own-key")
        before = await keyed.get_messages()
        with pytest.raises(ProviderSecretRequiredError) as missing:
            await keyed.send("Are you still there?")
        error_ = missing.value
        assert error_.status is grpc.StatusCode.FAILED_PRECONDITION
        assert error_.reason == "ERROR_REASON_PROVIDER_SECRET_REQUIRED"
        assert "client.resume_session('own-key', provider=" in error_.message
        assert "'api_key': ..." in error_.message and f"{server.url}/v1" in error_.message
        assert await keyed.get_messages() == before  # refused before anything was written

        tokened = await client.resume_session("own-token")
        with pytest.raises(ProviderSecretRequiredError) as missing:
            await tokened.send_and_wait("And you?")
        assert "'bearer_token': ..." in missing.value.message

        keyed = await client.resume_session("own-key", provider=own_key)
        answer = await keyed.send_and_wait("Back with my key")
        assert answer is not None and answer.data.content == server.default_text
        last = server.requests[-1]
        assert last.headers["authorization"] == f"Bearer {SESSION_KEY}"
        assert conversation(last)[1:3] == [
            ("user", "Hello over my own key"),
            ("assistant", server.default_text),
        ]
    assert daemon.terminate() == 0
    assert_nowhere(secrets, daemon)


async def test_configured_provider_answers_when_the_config_allows_it(
    start_daemon: DaemonFactory, server: FakeModelServer
) -> None:
    daemon = start_daemon('session_secret_missing = "use_configured"')
    own = ProviderConfig(type="anthropic", base_url=server.url, api_key=SESSION_KEY)
    async with connect(daemon) as client:
        session = await client.create_session(session_id="byok", model="gpt-test", provider=own)
        await session.send_and_wait("Through my own key")
    daemon.restart_after_kill()
    async with connect(daemon) as client:
        session = await client.resume_session("byok")
        answer = await session.send_and_wait("Through the configured provider")
        assert answer is not None
    mine, configured = server.requests
    assert mine.api == "anthropic" and SESSION_KEY in mine.headers["authorization"]
    assert configured.api == "openai" and configured.headers["authorization"] == (
        f"Bearer {OPENAI_KEY}"
    )


AMBIENT = {
    name: f"ambient-{name.lower()}-value"
    for name in (
        "OPENAI_API_KEY",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_AD_TOKEN",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_AUTH_TOKEN",
    )
}


async def test_own_provider_without_a_secret_needs_nothing_after_a_restart(
    start_daemon: DaemonFactory, server: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Keys in the daemon's environment must never go to a session's own server.
    for name, value in AMBIENT.items():
        monkeypatch.setenv(name, value)
    daemon = start_daemon()
    local = {"type": "openai", "base_url": f"{server.url}/v1", "max_prompt_tokens": 4000}
    async with connect(daemon) as client:
        session = await client.create_session(session_id="local", model="llama3", provider=local)
        await session.set_model("qwen2")  # a session's own provider serves any name
        await session.send_and_wait("Hi")
        other = await client.create_session(
            model="claude-x", provider={"type": "anthropic", "base_url": server.url}
        )
        await other.send_and_wait("Hi")
    daemon.restart_after_kill()
    async with connect(daemon) as client:
        session = await client.resume_session("local")
        await session.send_and_wait("Still there?")
    requests = server.requests
    assert [r.body["model"] for r in requests] == ["qwen2", "claude-x", "qwen2"]
    assert all(r.headers["authorization"] == "Bearer no-key" for r in requests)
    for request in requests:
        sent = repr(request.headers) + repr(request.body)
        assert not any(value in sent for value in AMBIENT.values())


# What the SDKs add to requests from the environment (explicit constructor
# arguments cannot turn these off): the daemon owner's, never a session's.
DAEMON_HEADERS = {
    "OPENAI_CUSTOM_HEADERS": (
        "X-Daemon-Secret: daemon-openai-header\n"
        "Authorization: Bearer daemon-openai-token\n"
        "api-key: daemon-azure-key"
    ),
    "ANTHROPIC_CUSTOM_HEADERS": (
        "X-Daemon-Secret: daemon-anthropic-header\n"
        "Authorization: Bearer daemon-anthropic-token\n"
        "x-api-key: daemon-anthropic-key"
    ),
    "OPENAI_ORG_ID": "daemon-org",
    "OPENAI_PROJECT_ID": "daemon-project",
    "OPENAI_ADMIN_KEY": "daemon-admin-key",
}


def own_providers(server: FakeModelServer) -> dict[str, dict[str, str]]:
    """Session providers of every type and credential, by the model name they serve."""
    azure = {"type": "azure", "base_url": server.url, "api_version": "2024-10-21"}
    anthropic = {"type": "anthropic", "base_url": server.url}
    return {
        "openai-key": {"type": "openai", "base_url": f"{server.url}/v1", "api_key": SESSION_KEY},
        "openai-none": {"type": "openai", "base_url": f"{server.url}/v1"},
        "azure-key": {**azure, "api_key": SESSION_KEY},
        "azure-token": {**azure, "bearer_token": SESSION_TOKEN},
        "anthropic-key": {**anthropic, "api_key": SESSION_KEY},
        "anthropic-token": {**anthropic, "bearer_token": SESSION_TOKEN},
    }


async def test_the_daemons_environment_headers_never_reach_an_own_provider(
    start_daemon: DaemonFactory, server: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in DAEMON_HEADERS.items():
        monkeypatch.setenv(name, value)
    daemon = start_daemon()
    own = own_providers(server)
    async with connect(daemon) as client:
        for model, provider in own.items():
            session = await client.create_session(model=model, provider=provider)
            await session.send_and_wait("Hi")
        for model in ("gpt-test", "claude-test"):
            configured = await client.create_session(model=model)
            await configured.send_and_wait("Hi")
    *mine, configured_openai, configured_anthropic = server.requests
    assert len(mine) == len(own)

    for model, request in zip(own, mine, strict=True):
        assert request.body["model"] == model
        assert "daemon" not in repr(request.headers), (model, request.headers)
        for header in ("x-daemon-secret", "openai-organization", "openai-project"):
            assert header not in request.headers, (model, header)
        credential = SESSION_TOKEN if model.endswith("token") else SESSION_KEY
        if model == "azure-key":
            assert request.headers["api-key"] == SESSION_KEY
            assert "authorization" not in request.headers
        elif model == "openai-none":
            assert request.headers["authorization"] == "Bearer no-key"
        else:
            assert request.headers["authorization"] == f"Bearer {credential}", model
            assert "api-key" not in request.headers and "x-api-key" not in request.headers
    # The configured providers get what the daemon's environment says, as before.
    assert configured_openai.headers["x-daemon-secret"] == "daemon-openai-header"
    assert configured_openai.headers["openai-organization"] == "daemon-org"
    assert configured_openai.headers["openai-project"] == "daemon-project"
    assert configured_anthropic.headers["x-daemon-secret"] == "daemon-anthropic-header"


@pytest.mark.parametrize(
    ("provider", "complaint"),
    [
        ({"type": "bedrock"}, "not one of openai, azure, anthropic"),
        ({"type": "azure", "base_url": "https://x.openai.azure.com"}, "api_version"),
        ({"type": "openai", "api_key": "k" * 8, "bearer_token": "t" * 8}, "not both"),
        ({"type": "openai", "base_url": "localhost:11434"}, "not an http:// or https:// URL"),
        (
            {"type": "openai", "wire_model": "m" * 20_000, "api_key": "k" * 17_000},
            "wire_model (20000 bytes), api_key (17000 bytes) over the limit of 16384",
        ),
    ],
)
async def test_invalid_own_provider_is_refused(
    client: CopilotClient, provider: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        await client.create_session(session_id="bad", provider=provider)
    assert refused.value.reason == "ERROR_REASON_INVALID_PROVIDER"
    assert complaint in refused.value.message
    assert await client.get_session_metadata("bad") is None
    await client.create_session(session_id="good")
    with pytest.raises(InvalidArgumentError) as refused:
        await client.resume_session("good", provider=provider)
    assert complaint in refused.value.message


async def test_own_provider_needs_a_model(client: CopilotClient, server: FakeModelServer) -> None:
    provider = ProviderConfig(base_url=f"{server.url}/v1")
    with pytest.raises(InvalidArgumentError) as refused:
        await client.create_session(provider=provider)
    assert "needs a model" in refused.value.message
    session = await client.create_session(provider=ProviderConfig(wire_model="served-name"))
    assert session.metadata.provider is not None
    assert session.metadata.provider.base_url is None  # the public endpoint of the type


async def test_own_azure_provider_with_a_token_and_a_prompt_budget(
    client: CopilotClient, server: FakeModelServer
) -> None:
    provider = ProviderConfig(
        type="azure",
        base_url=server.url,
        bearer_token=SESSION_TOKEN,
        api_version="2025-01-01-preview",
        wire_model="team-deployment",
        max_prompt_tokens=120,
    )
    session = await client.create_session(model="gpt-4o", provider=provider)
    long = "many words of context " * 8  # about 60 tokens by the estimate
    await session.send_and_wait(f"First: {long}")
    await session.send_and_wait(f"Second: {long}")
    first, second = server.requests
    assert first.path == "/openai/deployments/team-deployment/chat/completions"
    assert first.query["api-version"] == "2025-01-01-preview"
    assert first.headers["authorization"] == f"Bearer {SESSION_TOKEN}"
    assert conversation(second)[1:] == [("user", f"Second: {long}")]  # the first left out
    history = await session.get_messages()
    truncation = next(e for e in history if e.type is T.SESSION_TRUNCATION)
    assert (truncation.data.token_limit, truncation.data.messages_removed) == (120, 2)


async def test_an_answer_over_the_size_limit_is_stopped_and_kept_as_partial(
    start_daemon: DaemonFactory, server: FakeModelServer
) -> None:
    """A model that never stops cannot write an event no reader could carry."""
    limit = 64 * 1024
    daemon = start_daemon(args=("--max-prompt-bytes", str(limit)))
    chunk = "é" * 4000  # 8,000 bytes: the cut falls inside a two-byte character
    server.script(Reply(chunks=(chunk,) * 40), Reply(chunks=(chunk,) * 4), error(400, "x" * 9000))
    async with connect(daemon) as client:
        session = await client.create_session(model=MODEL_OF["openai"])
        with pytest.raises(SessionFailedError) as failed:
            await session.send_and_wait("Talk forever")
        assert failed.value.event.data.error_type == "answer_too_large"
        assert f"passed {limit} bytes" in (failed.value.event.data.message or "")
        history = await session.get_messages()
        assert types(history[1:]) == [
            T.USER_MESSAGE,
            T.ASSISTANT_TURN_START,
            T.ASSISTANT_MESSAGE,
            T.SESSION_ERROR,
            T.ASSISTANT_TURN_END,
        ]
        partial = history[3]
        assert partial.data.partial is True
        kept = partial.data.content or ""
        assert kept == "é" * (limit // 2)  # as many whole characters as fit
        assert history[5].data.reason == "error"

        # An answer under the limit is whole; a provider's long error body is clipped.
        answer = await session.send_and_wait("A short one")
        assert answer is not None and answer.data.content == chunk * 4
        with pytest.raises(SessionFailedError) as failed:
            await session.send_and_wait("And now?")
        message = failed.value.event.data.message or ""
        assert len(message) == 4096 and message.endswith("x…") and "400 Bad Request" in message
