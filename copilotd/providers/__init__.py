"""Model providers and the registry that routes each turn to one."""

from copilotd.providers.base import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ModelProvider,
    ProviderError,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
    with_summary,
)
from copilotd.providers.offline import OfflineProvider
from copilotd.providers.registry import (
    ModelRoute,
    ProviderRegistry,
    check_provider_config,
    public_provider_config,
)
from copilotd.providers.retry import RetryingProvider, RetryPolicy
from copilotd.providers.settings import ProviderSettings, load_provider_settings

__all__ = [
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ModelProvider",
    "ModelRoute",
    "OfflineProvider",
    "ProviderError",
    "ProviderRegistry",
    "ProviderSettings",
    "RetryPolicy",
    "RetryingProvider",
    "TextDelta",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "check_provider_config",
    "load_provider_settings",
    "public_provider_config",
    "with_summary",
]
