"""Which provider serves a session's turn, with which model settings.

Two sources:

* the **configured providers** (``[providers.NAME]`` tables), which serve the
  models they list (and, with ``[models] fallback_provider``, any other
  name); with none configured, the offline model answers every model name;
* a session's **own provider** (``SessionConfig.provider``, bring your own
  key). Its secrets are held here, in memory, for that session only: the
  store keeps the config with ``api_key`` and ``bearer_token`` left out
  (``public_provider_config``), so after a restart the client must pass the
  provider again, unless it needs no secret.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from copilot_client.proto.v1 import copilot_pb2, events_pb2
from copilotd.errors import FailedPreconditionError, InvalidArgumentError, Reason
from copilotd.providers.base import ModelProvider
from copilotd.providers.factory import build_provider
from copilotd.providers.offline import OfflineProvider
from copilotd.providers.settings import (
    ANTHROPIC_DEFAULT_MAX_OUTPUT_TOKENS,
    PUBLIC_BASE_URLS,
    Connection,
    ModelSettings,
    ProviderSettings,
    check_base_url,
)
from copilotd.redaction import REDACTOR

log = logging.getLogger(__name__)

OFFLINE_MODEL = "offline"
SESSION_PROVIDER_TYPES = ("openai", "azure", "anthropic")
ProviderConfig = events_pb2.ProviderConfig


@dataclass(frozen=True, kw_only=True)
class ModelRoute:
    """How one turn reaches its model.

    Attributes:
        model: the session's model name (recorded in its events).
        provider: what streams the answer.
        wire_model: the name the provider knows the model by.
        prompt_budget: tokens the request's messages may use (None: no trimming).
        max_output_tokens: largest answer to ask for (None: the provider's default).
    """

    model: str
    provider: ModelProvider
    wire_model: str
    prompt_budget: int | None = None
    max_output_tokens: int | None = None


@dataclass
class _SessionProvider:
    config: ProviderConfig  # with its secrets: memory only
    provider: ModelProvider


def prompt_budget(
    context_window: int | None, max_output_tokens: int | None, max_prompt_tokens: int | None
) -> int | None:
    """Tokens left for the prompt: explicit, or the window less the room for the answer."""
    if max_prompt_tokens:
        return max_prompt_tokens
    if context_window:
        return max(1, context_window - (max_output_tokens or 0))
    return None


def public_provider_config(config: ProviderConfig) -> ProviderConfig:
    """``config`` without its secrets, naming which one it had (what may be stored)."""
    public = ProviderConfig()
    public.CopyFrom(config)
    public.credential = (
        "api_key" if config.api_key else "bearer_token" if config.bearer_token else ""
    )
    public.ClearField("api_key")
    public.ClearField("bearer_token")
    return public


# Generous for a URL, a model name or a token (Entra ID tokens run to a few
# KiB); small enough that a session's stored metadata stays small.
MAX_PROVIDER_FIELD_BYTES = 16 * 1024


def check_provider_config(config: ProviderConfig) -> None:
    """Raise ``InvalidArgumentError`` (INVALID_PROVIDER) for a config that cannot work."""
    problem = ""
    oversized = [
        f"{name} ({size} bytes)"
        for name in ("base_url", "api_version", "wire_model", "api_key", "bearer_token")
        if (size := len(getattr(config, name).encode())) > MAX_PROVIDER_FIELD_BYTES
    ]
    if oversized:
        problem = (
            f"provider {', '.join(oversized)} over the limit of {MAX_PROVIDER_FIELD_BYTES} "
            "bytes a provider field may take; check what was passed"
        )
    elif config.type not in SESSION_PROVIDER_TYPES:
        problem = f"provider type {config.type!r} is not one of {', '.join(SESSION_PROVIDER_TYPES)}"
    elif config.api_key and config.bearer_token:
        problem = "give the provider an api_key or a bearer_token, not both"
    elif config.type == "azure" and not (config.base_url and config.api_version):
        problem = (
            "an azure provider needs base_url (https://NAME.openai.azure.com) and "
            "api_version (e.g. 2024-10-21)"
        )
    elif config.base_url:
        problem = check_base_url(config.base_url) or ""
    if problem:
        raise InvalidArgumentError(problem, Reason.ERROR_REASON_INVALID_PROVIDER)


class ProviderRegistry:
    """Routes turns to providers; holds the configured ones and the sessions' own.

    Args:
        settings: the ``[providers.*]`` and ``[models]`` tables; None or
            empty: offline only.
        offline_delta_delay: seconds the offline model waits before each delta.
    """

    def __init__(
        self, settings: ProviderSettings | None = None, *, offline_delta_delay: float = 0.0
    ) -> None:
        self._settings = settings or ProviderSettings()
        self._offline = OfflineProvider(delta_delay=offline_delta_delay)
        self._providers = {
            name: build_provider(connection, offline_delta_delay=offline_delta_delay)
            for name, connection in self._settings.connections.items()
        }
        self._sessions: dict[str, _SessionProvider] = {}
        self.default_model = self._settings.default_model or OFFLINE_MODEL

    @property
    def offline_only(self) -> bool:
        return not self._providers

    async def warm_up(self) -> None:
        """Build the configured providers now (their SDKs load in a worker thread)."""
        await asyncio.gather(*(p.warm_up() for p in self._providers.values()))

    # -- models ----------------------------------------------------------------

    def list_models(self) -> list[copilot_pb2.ModelInfo]:
        """The configured models, the default first."""
        if self.offline_only:
            return [
                copilot_pb2.ModelInfo(
                    id=OFFLINE_MODEL, provider="offline", provider_type="offline", is_default=True
                )
            ]
        models = [self._settings.model(self.default_model)]
        models += [m for m in self._settings.models.values() if m.name != self.default_model]
        return [
            copilot_pb2.ModelInfo(
                id=m.name,
                provider=m.provider,
                provider_type=self._settings.connections[m.provider].type,
                context_window=m.context_window or 0,
                max_output_tokens=m.max_output_tokens or 0,
                is_default=m.name == self.default_model,
            )
            for m in models
            if m is not None
        ]

    def check_model(self, model: str) -> None:
        """Raise ``InvalidArgumentError`` (UNKNOWN_MODEL) when no configured provider serves it."""
        if self.offline_only or self._settings.model(model) is not None:
            return
        raise InvalidArgumentError(
            f"model {model!r} is not offered by this daemon's providers (offered: "
            f"{self._offered()}; client.list_models() lists them); pick one of those, "
            "configure a provider for it in copilotd's config file, or give the session its "
            "own provider (SessionConfig.provider)",
            Reason.ERROR_REASON_UNKNOWN_MODEL,
        )

    def _offered(self) -> str:
        return ", ".join(self._settings.models) or "any name, through the fallback provider"

    # -- routing ---------------------------------------------------------------

    def route_for(self, metadata: copilot_pb2.SessionMetadata) -> ModelRoute:
        """How the next turn of this session reaches its model.

        Raises:
            FailedPreconditionError: PROVIDER_SECRET_REQUIRED when the session's
                own provider needs a secret this daemon does not hold (and the
                config does not allow the configured provider instead);
                MODEL_UNAVAILABLE when no provider serves the session's model.
        """
        session_id = metadata.session_id
        if metadata.provider.type:
            held = self._sessions.get(session_id)
            if held is None and not metadata.provider.credential:
                held = self._hold(session_id, metadata.provider)  # it needs no secret
            if held is not None:
                return self._session_route(metadata.model, held.config, held.provider)
            route = None
            if self._settings.use_configured_when_secret_missing:
                route = self._configured_route(metadata.model)
            if route is None:
                raise self._secret_required(session_id, metadata.provider)
            return route
        route = self._configured_route(metadata.model)
        if route is None:
            raise FailedPreconditionError(
                f"session {session_id!r} uses model {metadata.model!r}, which none of this "
                f"daemon's providers offers now (offered: {self._offered()}); switch the "
                "session to another with session.set_model(...) (SetModel), or configure a "
                "provider for it",
                Reason.ERROR_REASON_MODEL_UNAVAILABLE,
            )
        return route

    def _configured_route(self, model: str) -> ModelRoute | None:
        if self.offline_only:
            return ModelRoute(model=model, provider=self._offline, wire_model=model)
        settings: ModelSettings | None = self._settings.model(model)
        if settings is None:
            return None
        return ModelRoute(
            model=model,
            provider=self._providers[settings.provider],
            wire_model=settings.wire_model,
            prompt_budget=prompt_budget(
                settings.context_window, settings.max_output_tokens, settings.max_prompt_tokens
            ),
            max_output_tokens=settings.max_output_tokens,
        )

    @staticmethod
    def _session_route(model: str, config: ProviderConfig, provider: ModelProvider) -> ModelRoute:
        max_output = config.max_output_tokens or None
        if max_output is None and config.type == "anthropic":
            max_output = ANTHROPIC_DEFAULT_MAX_OUTPUT_TOKENS
        return ModelRoute(
            model=model,
            provider=provider,
            wire_model=config.wire_model or model,
            prompt_budget=config.max_prompt_tokens or None,
            max_output_tokens=max_output,
        )

    @staticmethod
    def _secret_required(session_id: str, public: ProviderConfig) -> FailedPreconditionError:
        secret = public.credential
        base_url = public.base_url or PUBLIC_BASE_URLS.get(public.type, "")
        example = f"{{'type': '{public.type}', 'base_url': '{base_url}', '{secret}': ...}}"
        return FailedPreconditionError(
            f"session {session_id!r} answers through its own {public.type} provider at "
            f"{base_url}, and copilotd does not hold its {secret}: secrets are kept in memory "
            "only, so a daemon restart forgets them. Resume the session with the provider "
            f"again - client.resume_session({session_id!r}, provider={example}) "
            "(ResumeSessionRequest.provider) - then send again",
            Reason.ERROR_REASON_PROVIDER_SECRET_REQUIRED,
        )

    # -- sessions' own providers ------------------------------------------------

    async def hold_session_provider(self, session_id: str, config: ProviderConfig) -> None:
        """Keep ``config`` (secrets included, in memory) as the session's provider.

        The same config again (a client resuming as before) keeps the provider
        and its connections; another replaces it.
        """
        held = self._sessions.get(session_id)
        if held is not None and held.config == config:
            return
        await self.forget_session(session_id)
        self._hold(session_id, config)
        log.info(
            "session %s uses its own %s provider at %s",
            session_id,
            config.type,
            config.base_url or PUBLIC_BASE_URLS.get(config.type, ""),
        )

    async def share_session_provider(self, source_id: str, session_id: str) -> None:
        """A fork answers through its source's own provider: hold its config (secrets
        included) for the fork too, when this daemon holds it."""
        held = self._sessions.get(source_id)
        if held is not None:
            await self.hold_session_provider(session_id, held.config)

    def _hold(self, session_id: str, config: ProviderConfig) -> _SessionProvider:
        for secret in (config.api_key, config.bearer_token):
            if secret:
                REDACTOR.add(secret)
        connection = Connection(
            name=f"session {session_id}",
            type=config.type,
            base_url=config.base_url or PUBLIC_BASE_URLS.get(config.type, ""),
            api_key=config.api_key or None,
            bearer_token=config.bearer_token or None,
            api_version=config.api_version,
            use_environment=False,  # the daemon's headers are not for the session's server
        )
        provider = build_provider(connection)
        provider.metrics_label = f"session's own {config.type}"
        held = _SessionProvider(config=config, provider=provider)
        self._sessions[session_id] = held
        return held

    async def forget_session(self, session_id: str) -> None:
        """Drop the session's own provider and its secrets, if it has one here."""
        held = self._sessions.pop(session_id, None)
        if held is None:
            return
        await held.provider.aclose()
        for secret in (held.config.api_key, held.config.bearer_token):
            if secret:
                REDACTOR.discard(secret)

    async def aclose(self) -> None:
        for session_id in list(self._sessions):
            await self.forget_session(session_id)
        for provider in [*self._providers.values(), self._offline]:
            await provider.aclose()
