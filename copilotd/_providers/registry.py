"""Which provider serves which model."""

from __future__ import annotations

from copilotd._providers.base import ModelProvider
from copilotd._providers.offline import OfflineProvider

OFFLINE_MODEL = "offline"


class ProviderRegistry:
    """Maps model names to providers; with none configured, the offline model serves all.

    Args:
        providers: model name -> provider; empty means offline only.
        default_model: the model of sessions created without one.
        fallback: serves models no configured provider claims.
    """

    def __init__(
        self,
        providers: dict[str, ModelProvider] | None = None,
        *,
        default_model: str = OFFLINE_MODEL,
        fallback: ModelProvider | None = None,
    ) -> None:
        self._providers = dict(providers or {})
        self.default_model = default_model
        self._fallback = fallback or OfflineProvider()

    def provider_for(self, model: str) -> ModelProvider:
        return self._providers.get(model, self._fallback)

    async def aclose(self) -> None:
        for provider in {id(p): p for p in [*self._providers.values(), self._fallback]}.values():
            await provider.aclose()
