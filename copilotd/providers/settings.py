"""The ``[providers.NAME]`` and ``[models]`` tables of the config file.

Example (``docs/configuration.md`` has one per kind of server, and every key)::

    [models]
    default = "gpt-4o-mini"        # model of sessions created without one

    [providers.openai]
    type = "openai"                # openai | azure | anthropic | offline
    api_key_env = "OPENAI_API_KEY" # or api_key = "..."
    context_window = 128000        # default for the models below
    models = ["gpt-4o", "gpt-4o-mini"]

Tables are validated with pydantic (``providers.tables``; unknown keys are
refused, so a typo never silently does nothing); errors name the file, the
table and the key. pydantic is imported only when the file has one of these
tables: a daemon without providers starts without it.
Secrets read here (``api_key``, ``bearer_token``, header values that look
like credentials) are handed to the log redactor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

# The typed values live in the leaf config (the daemon's config is one tree);
# the rules of these tables stay here, with the providers that know them.
from copilotd.config import DEFAULT_CONNECT_TIMEOUT as DEFAULT_CONNECT_TIMEOUT
from copilotd.config import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from copilotd.config import ConfigError, ConfigFile, RetryPolicy
from copilotd.config import Connection as Connection
from copilotd.config import ModelSettings as ModelSettings
from copilotd.config import ProviderSettings as ProviderSettings
from copilotd.redaction import REDACTOR

if TYPE_CHECKING:
    from copilotd.providers.tables import ModelTable, ProviderTable

ProviderType = Literal["openai", "azure", "anthropic", "offline"]
PROVIDER_TYPES: tuple[str, ...] = ("openai", "azure", "anthropic", "offline")
PUBLIC_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
# The Anthropic API requires max_tokens on every request.
ANTHROPIC_DEFAULT_MAX_OUTPUT_TOKENS = 4096
# Header names whose values are treated as secrets (redacted from logs).
_SECRET_HEADER_WORDS = ("auth", "key", "token", "secret", "cookie")


def check_base_url(url: str) -> str | None:
    """Why ``url`` cannot be a provider's base URL, or None when it can."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"base_url {url!r} is not an http:// or https:// URL"
    return None


def load_provider_settings(
    config: ConfigFile, environ: Mapping[str, str] = os.environ
) -> ProviderSettings:
    """Read and check ``[providers.*]`` and ``[models]``; raises ``ConfigError``."""
    where = config.where()
    providers = config.section("providers")
    models_section = config.section("models")
    if not providers and not models_section:
        return ProviderSettings()  # offline only, and pydantic stays unloaded
    from copilotd.providers.tables import ModelsTable, ModelTable, ProviderTable, parse_table

    models_table = parse_table(ModelsTable, models_section, f"{where}: [models]")
    connections: dict[str, Connection] = {}
    models: dict[str, ModelSettings] = {}
    fallback_name = models_table.fallback_provider
    fallback: ModelSettings | None = None
    for name, raw in providers.items():
        label = f"{where}: [providers.{name}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{label} must be a table (type = ..., models = [...])")
        table = parse_table(ProviderTable, raw, label)
        connections[name] = _connection(name, table, label, environ)
        if name == fallback_name:
            fallback = _model(name, table, "", ModelTable(), label)
        for model in _models(name, table, label):
            if model.name in models:
                raise ConfigError(
                    f"{where}: model {model.name!r} is offered by both [providers."
                    f"{models[model.name].provider}] and [providers.{name}]; list it once, or "
                    f"list it under another name with wire_model = {model.wire_model!r}"
                )
            models[model.name] = model
    if fallback_name is not None and fallback is None:
        raise ConfigError(
            f"{where}: [models] fallback_provider = {fallback_name!r} names no [providers.*] table"
        )
    if connections and not models and fallback is None:
        raise ConfigError(
            f"{where}: the configured providers list no models; add models = [...] to a "
            "[providers.NAME] table, or set [models] fallback_provider"
        )
    settings = ProviderSettings(
        connections=connections,
        models=models,
        fallback=fallback,
        use_configured_when_secret_missing=models_table.session_secret_missing == "use_configured",
    )
    default = models_table.default
    if default is None and connections:
        if not models:
            raise ConfigError(
                f"{where}: [models] default is needed when no provider lists models "
                "(the model of sessions created without one)"
            )
        default = next(iter(models))
    elif default is not None and connections and settings.model(default) is None:
        offered = ", ".join(models) or "none: no provider lists models"
        raise ConfigError(
            f"{where}: [models] default = {default!r} is not a model of any provider "
            f"(offered: {offered})"
        )
    return replace(settings, default_model=default)


def _secret(
    table: ProviderTable, kind: str, label: str, environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """The value of ``kind`` ("api_key" or "bearer_token") and why it is missing, if it is."""
    value: str | None = getattr(table, kind)
    variable: str | None = getattr(table, f"{kind}_env")
    if value is not None and variable is not None:
        raise ConfigError(f"{label}: set {kind} or {kind}_env, not both")
    if variable is not None:
        value = environ.get(variable) or None
        if value is None:
            return None, (
                f"the environment variable {variable} (named by {kind}_env in {label}) is not "
                "set in copilotd's environment"
            )
    return value, ""


def _connection(
    name: str, table: ProviderTable, label: str, environ: Mapping[str, str]
) -> Connection:
    api_key, missing_key = _secret(table, "api_key", label, environ)
    bearer_token, missing_token = _secret(table, "bearer_token", label, environ)
    if api_key is not None and bearer_token is not None:
        raise ConfigError(f"{label}: give an api_key or a bearer_token, not both")
    missing = "" if api_key or bearer_token else (missing_key or missing_token)
    base_url = table.base_url or PUBLIC_BASE_URLS.get(table.type, "")
    if table.type == "azure" and (not table.base_url or not table.api_version):
        raise ConfigError(
            f"{label}: an azure provider needs base_url (https://NAME.openai.azure.com) "
            "and api_version (e.g. 2024-10-21)"
        )
    if table.type != "offline":
        problem = check_base_url(base_url)
        if problem:
            raise ConfigError(f"{label}: {problem}")
    for secret in (api_key, bearer_token):
        if secret:
            REDACTOR.add(secret)
    for header, value in table.headers.items():
        if any(word in header.lower() for word in _SECRET_HEADER_WORDS):
            REDACTOR.add(value)
    return Connection(
        name=name,
        type=table.type,
        base_url=base_url,
        api_key=api_key,
        bearer_token=bearer_token,
        missing_secret=missing,
        api_version=table.api_version or "",
        headers=dict(table.headers),
        timeout=table.timeout,
        connect_timeout=table.connect_timeout,
        retry=RetryPolicy(
            max_retries=table.max_retries,
            initial_delay=table.retry_initial_delay,
            max_delay=table.retry_max_delay,
            max_retry_after=table.max_retry_after,
        ),
        stream_usage=table.stream_usage,
        max_tokens_param=table.max_tokens_param,
    )


def _models(name: str, table: ProviderTable, label: str) -> list[ModelSettings]:
    from copilotd.providers.tables import ModelTable  # loaded already: table is one of its

    entries = (
        dict.fromkeys(table.models, ModelTable())
        if isinstance(table.models, list)
        else table.models
    )
    models = []
    for model, settings in entries.items():
        if not model.strip():
            raise ConfigError(f"{label}: a model name is empty")
        models.append(_model(name, table, model, settings, f"{label} model {model!r}"))
    return models


def _model(
    provider: str, table: ProviderTable, name: str, settings: ModelTable, label: str
) -> ModelSettings:
    max_output = settings.max_output_tokens or table.max_output_tokens
    if max_output is None and table.type == "anthropic":
        max_output = ANTHROPIC_DEFAULT_MAX_OUTPUT_TOKENS
    window = settings.context_window or table.context_window
    if window and not settings.max_prompt_tokens and (max_output or 0) >= window:
        raise ConfigError(
            f"{label}: max_output_tokens ({max_output}) leaves no room for the prompt in "
            f"context_window ({window}); lower it or raise context_window"
        )
    return ModelSettings(
        name=name,
        provider=provider,
        wire_model=settings.wire_model or name,
        context_window=window,
        max_output_tokens=max_output,
        max_prompt_tokens=settings.max_prompt_tokens,
    )
