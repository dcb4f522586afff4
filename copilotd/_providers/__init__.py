"""Model providers and the registry that picks one per model."""

from copilotd._providers.base import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ModelProvider,
    ProviderError,
    TextDelta,
    Usage,
)
from copilotd._providers.offline import OfflineProvider
from copilotd._providers.registry import ProviderRegistry

__all__ = [
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ModelProvider",
    "OfflineProvider",
    "ProviderError",
    "ProviderRegistry",
    "TextDelta",
    "Usage",
]
