"""The pydantic models of the ``[providers.NAME]`` and ``[models]`` tables.

Apart from ``providers.settings`` because pydantic takes a tenth of a second
to import: only a config file with one of these tables loads this module.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from copilotd.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ConfigError,
    RetryPolicy,
    unknown_name_error,
)
from copilotd.providers.settings import ProviderType

TableT = TypeVar("TableT", bound="_Table")
Positive = Annotated[float, Field(gt=0)]
TokenCount = Annotated[int, Field(ge=1)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelTable(_Table):
    """``[providers.NAME.models.MODEL]``."""

    wire_model: str | None = None
    context_window: TokenCount | None = None
    max_output_tokens: TokenCount | None = None
    max_prompt_tokens: TokenCount | None = None


class ProviderTable(_Table):
    """``[providers.NAME]``."""

    type: ProviderType
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    bearer_token: str | None = None
    bearer_token_env: str | None = None
    api_version: str | None = None
    headers: dict[str, str] = {}
    timeout: Positive = DEFAULT_TIMEOUT
    connect_timeout: Positive = DEFAULT_CONNECT_TIMEOUT
    max_retries: Annotated[int, Field(ge=0, le=20)] = RetryPolicy.max_retries
    retry_initial_delay: Annotated[float, Field(ge=0)] = RetryPolicy.initial_delay
    retry_max_delay: Annotated[float, Field(ge=0)] = RetryPolicy.max_delay
    max_retry_after: Annotated[float, Field(ge=0)] = RetryPolicy.max_retry_after
    stream_usage: bool = True
    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    context_window: TokenCount | None = None
    max_output_tokens: TokenCount | None = None
    models: list[str] | dict[str, ModelTable] = []


class ModelsTable(_Table):
    """``[models]``."""

    default: str | None = None
    fallback_provider: str | None = None
    # What a send does on a session whose own provider's secret the daemon no
    # longer holds (after a restart): "fail" says what to pass again;
    # "use_configured" answers with the configured provider of its model.
    session_secret_missing: Literal["fail", "use_configured"] = "fail"


def parse_table(kind: type[TableT], values: dict[str, Any], label: str) -> TableT:
    try:
        return kind.model_validate(values)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_input=False)
        # An unknown key is the likeliest typo; alone, it says the most (the
        # union of a provider's models otherwise adds a "not a list" error).
        for item in errors:
            if item["type"] == "extra_forbidden":
                raise _unknown_key(kind, item["loc"], label) from None
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'table'}: {item['msg']}"
            for item in errors
        )
        raise ConfigError(f"{label}: {problems}") from None


def _unknown_key(kind: type[_Table], loc: tuple[int | str, ...], label: str) -> ConfigError:
    *path, key = (str(part) for part in loc)
    if not path:
        return unknown_name_error(label, "key", key, list(kind.model_fields))
    # The only nested tables are a provider's models: ("models", <union branch>, MODEL, key).
    return unknown_name_error(
        f"{label} model {path[-1]!r}", "key", key, list(ModelTable.model_fields)
    )
