"""Building a provider from its connection settings.

Importing the SDKs takes about two seconds (``anthropic`` alone over one), so
the daemon does not wait for them: a network provider is a
``DeferredProvider`` that imports its SDK and builds its client in a worker
thread, started in the background once the daemon serves
(``ProviderRegistry.warm_up``) or by the first turn that needs it. The event
loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

from copilotd.providers.base import ChatChunk, ChatRequest, ModelProvider, ProviderError
from copilotd.providers.offline import OfflineProvider
from copilotd.providers.retry import RetryingProvider
from copilotd.providers.settings import Connection

log = logging.getLogger(__name__)


def build_provider(connection: Connection, *, offline_delta_delay: float = 0.0) -> ModelProvider:
    if connection.type == "offline":
        return OfflineProvider(delta_delay=offline_delta_delay)
    if connection.type not in ("openai", "azure", "anthropic"):
        raise ValueError(f"unknown provider type {connection.type!r}")
    deferred = DeferredProvider(connection.name, lambda: _network_provider(connection))
    return RetryingProvider(deferred, connection.retry)


def _network_provider(connection: Connection) -> ModelProvider:
    """Import the SDK and build the client (runs in a worker thread)."""
    if connection.type == "anthropic":
        from copilotd.providers.anthropic_messages import AnthropicMessagesProvider

        return AnthropicMessagesProvider(connection)
    from copilotd.providers.openai_chat import OpenAIChatProvider

    return OpenAIChatProvider(connection)


class DeferredProvider(ModelProvider):
    """A provider built off the event loop, once, when first needed."""

    def __init__(self, name: str, build: Callable[[], ModelProvider]) -> None:
        self.name = name
        self._build = build
        self._provider: ModelProvider | None = None
        self._lock = asyncio.Lock()

    async def ready(self) -> ModelProvider:
        """The real provider, built now if it was not yet."""
        if self._provider is None:
            async with self._lock:
                if self._provider is None:
                    try:
                        self._provider = await asyncio.to_thread(self._build)
                    except Exception as error:
                        log.exception("provider %s cannot be set up", self.name)
                        raise ProviderError(
                            f"provider {self.name!r} cannot be set up: {error}",
                            error_type="configuration",
                        ) from None
        return self._provider

    async def warm_up(self) -> None:
        with contextlib.suppress(ProviderError):  # logged; its turns will say so
            await self.ready()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk]:
        provider = await self.ready()
        async with contextlib.aclosing(provider.stream(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def aclose(self) -> None:
        if self._provider is not None:
            await self._provider.aclose()
