"""Models and model providers: what a session answers with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, cast

from .proto.v1 import copilot_pb2, events_pb2

__all__ = ["ModelInfo", "ProviderConfig"]

ProviderType = Literal["openai", "azure", "anthropic"]

_INT_FIELDS = ("max_prompt_tokens", "max_output_tokens")


@dataclass(frozen=True, kw_only=True)
class ProviderConfig:
    """A session's own model provider ("bring your own key"), as in the Copilot SDK.

    The daemon keeps ``api_key`` and ``bearer_token`` in memory for the
    session only; they are never stored. After a daemon restart, pass the
    provider again: ``client.resume_session(id, provider=...)``. Neither
    secret appears in ``repr()``.
    """

    type: ProviderType = "openai"
    """``"openai"`` (OpenAI and compatible servers: Ollama, vLLM, llama.cpp,
    LM Studio), ``"azure"`` (Azure OpenAI) or ``"anthropic"``."""

    base_url: str | None = None
    """E.g. ``"http://localhost:11434/v1"``; ``None``: the public endpoint of
    the type (required for ``"azure"``: ``https://NAME.openai.azure.com``)."""

    api_key: str | None = field(default=None, repr=False)
    """The API key (a secret: held in the daemon's memory only)."""

    bearer_token: str | None = field(default=None, repr=False)
    """A bearer token instead of an API key (a secret too)."""

    api_version: str | None = None
    """Azure OpenAI API version, e.g. ``"2024-10-21"``."""

    wire_model: str | None = None
    """The model (Azure: deployment) name sent to the provider; ``None``:
    the session's model."""

    max_prompt_tokens: int | None = None
    """Budget for the history sent each turn; the oldest messages are left
    out beyond it (``None``: no trimming)."""

    max_output_tokens: int | None = None
    """Largest answer to ask for (``None``: the provider's default)."""

    credential: str | None = None
    """In metadata read back from the daemon: which secret the session was
    given (``"api_key"`` or ``"bearer_token"``), so you know what to pass
    again. Ignored when sent."""

    @classmethod
    def coerce(cls, value: ProviderConfig | Mapping[str, Any]) -> ProviderConfig:
        """A config from a :class:`ProviderConfig` or a dict like the Copilot SDK's.

        The dict may hold Azure's version as ``{"azure": {"api_version": ...}}``.

        Raises:
            ValueError: For unknown keys or a ``wire_api`` other than ``"completions"``.
            TypeError: For any other type.
        """
        if isinstance(value, ProviderConfig):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"provider must be a ProviderConfig or dict, not {type(value)}")
        values = dict(value)
        azure = values.pop("azure", None) or {}
        if "api_version" in azure:
            values.setdefault("api_version", azure["api_version"])
        wire_api = values.pop("wire_api", "completions")
        if wire_api != "completions":
            raise ValueError(
                f'provider wire_api {wire_api!r} is not supported; copilotd speaks "completions"'
            )
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown provider keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def to_proto(self) -> events_pb2.ProviderConfig:
        """The wire form (secrets included: it goes to the daemon only)."""
        return events_pb2.ProviderConfig(
            type=self.type,
            base_url=self.base_url or "",
            api_key=self.api_key or "",
            bearer_token=self.bearer_token or "",
            api_version=self.api_version or "",
            wire_model=self.wire_model or "",
            max_prompt_tokens=self.max_prompt_tokens or 0,
            max_output_tokens=self.max_output_tokens or 0,
        )

    @classmethod
    def from_proto(cls, proto: events_pb2.ProviderConfig) -> ProviderConfig | None:
        """Converts the wire form; ``None`` when unset."""
        if not proto.type:
            return None
        texts = ("base_url", "api_version", "wire_model", "credential")
        return cls(
            type=cast(ProviderType, proto.type),
            **{name: getattr(proto, name) or None for name in (*texts, *_INT_FIELDS)},
        )


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """A model the daemon offers (:meth:`CopilotClient.list_models`)."""

    id: str
    """The name to pass as ``SessionConfig.model`` or to ``set_model``."""

    provider: str
    """The configured provider that serves it (``"offline"``: the built-in model)."""

    provider_type: str
    """``"openai"``, ``"azure"``, ``"anthropic"`` or ``"offline"``."""

    context_window: int | None
    """Context window in tokens; ``None`` when not configured (no trimming)."""

    max_output_tokens: int | None
    """Largest answer asked for; ``None``: the provider's default."""

    is_default: bool
    """The model of sessions created without one."""

    @classmethod
    def from_proto(cls, proto: copilot_pb2.ModelInfo) -> ModelInfo:
        """Converts the wire form."""
        return cls(
            id=proto.id,
            provider=proto.provider,
            provider_type=proto.provider_type,
            context_window=proto.context_window or None,
            max_output_tokens=proto.max_output_tokens or None,
            is_default=proto.is_default,
        )
