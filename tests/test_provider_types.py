"""copilot_client's model and provider types, and the new events, without a daemon."""

from __future__ import annotations

from typing import Any

import pytest

from copilot_client import (
    EventData,
    FailedPreconditionError,
    ModelInfo,
    ProviderConfig,
    ProviderSecretRequiredError,
    SessionConfig,
    SessionEvent,
    SessionEventType,
    SessionMetadata,
)
from copilot_client.proto.v1 import copilot_pb2
from copilotd.events import make_event


def test_provider_config_round_trip_keeps_secrets_out_of_repr() -> None:
    config = ProviderConfig(
        type="azure",
        base_url="https://x.openai.azure.com",
        api_key="sk-very-secret",
        api_version="2024-10-21",
        wire_model="deployment",
        max_prompt_tokens=1000,
    )
    assert "sk-very-secret" not in repr(config) and "sk-very-secret" not in str(config)
    proto = config.to_proto()
    assert (proto.api_key, proto.wire_model, proto.max_prompt_tokens) == (
        "sk-very-secret",
        "deployment",
        1000,
    )
    assert SessionConfig(provider=config).to_proto().provider == proto
    proto.ClearField("api_key")
    proto.credential = "api_key"
    back = ProviderConfig.from_proto(proto)
    assert back is not None and back.credential == "api_key" and back.api_key is None
    assert ProviderConfig.from_proto(copilot_pb2.SessionMetadata().provider) is None


def test_provider_config_accepts_the_copilot_sdk_dict() -> None:
    config = ProviderConfig.coerce(
        {"type": "azure", "base_url": "https://x.openai.azure.com", "azure": {"api_version": "v1"}}
    )
    assert config.api_version == "v1"
    assert ProviderConfig.coerce(config) is config
    with pytest.raises(ValueError, match="wire_api"):
        ProviderConfig.coerce({"type": "openai", "wire_api": "responses"})
    with pytest.raises(ValueError, match="unknown provider keys"):
        ProviderConfig.coerce({"type": "openai", "apikey": "typo"})
    with pytest.raises(TypeError):
        ProviderConfig.coerce("openai")  # type: ignore[arg-type]


def test_model_info_and_metadata_totals() -> None:
    info = ModelInfo.from_proto(copilot_pb2.ModelInfo(id="m", provider="p", provider_type="openai"))
    assert (info.context_window, info.max_output_tokens, info.is_default) == (None, None, False)
    proto = copilot_pb2.SessionMetadata(session_id="s", input_tokens=12, output_tokens=3)
    metadata = SessionMetadata.from_proto(proto)
    assert (metadata.input_tokens, metadata.output_tokens, metadata.provider) == (12, 3, None)


@pytest.mark.parametrize(
    ("event_type", "payload", "expected"),
    [
        (
            "assistant.usage",
            {"model": "m", "input_tokens": 10, "output_tokens": 0, "duration_ms": 5},
            {"model": "m", "input_tokens": 10, "output_tokens": 0, "duration_ms": 5},
        ),
        (
            "session.model_change",
            {"previous_model": "a", "new_model": "b"},
            {"previous_model": "a", "new_model": "b"},
        ),
        (
            "session.truncation",
            {"token_limit": 300, "messages_removed": 4, "first_kept_sequence": 9},
            {"token_limit": 300, "messages_removed": 4, "first_kept_sequence": 9},
        ),
        (
            "session.error",
            {"error_type": "rate_limit", "message": "m", "status_code": 429, "attempts": 4},
            {"error_type": "rate_limit", "status_code": 429, "attempts": 4},
        ),
        ("session.error", {"error_type": "internal", "message": "m"}, {"status_code": None}),
    ],
)
def test_new_events_convert(
    event_type: str, payload: dict[str, Any], expected: dict[str, Any]
) -> None:
    event = SessionEvent.from_proto(make_event(event_type, **payload))
    assert event.type is SessionEventType(event_type) is not SessionEventType.UNKNOWN
    for name, value in expected.items():
        assert getattr(event.data, name) == value, name
    assert isinstance(event.data, EventData)


def test_secret_required_is_a_failed_precondition() -> None:
    assert issubclass(ProviderSecretRequiredError, FailedPreconditionError)
