"""Building a provider from its connection settings.

The SDK modules are imported only when a provider of their type is built, so
a daemon that uses neither pays nothing for them at startup.
"""

from __future__ import annotations

from copilotd._providers.base import ModelProvider
from copilotd._providers.offline import OfflineProvider
from copilotd._providers.retry import RetryingProvider
from copilotd._providers.settings import Connection


def build_provider(connection: Connection, *, offline_delta_delay: float = 0.0) -> ModelProvider:
    if connection.type == "offline":
        return OfflineProvider(delta_delay=offline_delta_delay)
    inner: ModelProvider
    if connection.type in ("openai", "azure"):
        from copilotd._providers.openai_chat import OpenAIChatProvider

        inner = OpenAIChatProvider(connection)
    elif connection.type == "anthropic":
        from copilotd._providers.anthropic_messages import AnthropicMessagesProvider

        inner = AnthropicMessagesProvider(connection)
    else:
        raise ValueError(f"unknown provider type {connection.type!r}")
    return RetryingProvider(inner, connection.retry)
