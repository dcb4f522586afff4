"""Bounded retries with exponential backoff and jitter, honouring ``Retry-After``.

The SDKs' own retry loops are turned off (``max_retries=0``) and this one
wraps every network provider instead, because:

* it retries a stream that fails *before its first text* — a connection
  dropped or timed out after the response headers, which the SDKs do not
  retry — and never one that has already streamed text to subscribers
  (that turn ends with the partial text kept and a ``session.error``);
* its delays are configurable per provider (``retry_initial_delay``,
  ``retry_max_delay``, ``max_retry_after``), which the SDKs' are not;
* one policy, tested once, serves both SDKs.

What is retried is decided where the error is made (``ProviderError.retryable``:
429, 408, 409, 5xx, 529, timeouts, dropped connections; never 401/403/400).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator

# The policy is a config value (``[providers.NAME]`` retry keys), so it lives in the leaf.
from copilotd.config import RetryPolicy as RetryPolicy
from copilotd.providers.base import ChatChunk, ChatRequest, ModelProvider, ProviderError

log = logging.getLogger(__name__)


class RetryingProvider(ModelProvider):
    """``inner``, with failed requests retried until the first text arrives."""

    def __init__(self, inner: ModelProvider, policy: RetryPolicy) -> None:
        self.inner = inner
        self.policy = policy
        self.name = inner.name
        self.counts_tokens = inner.counts_tokens

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk]:
        attempt = 1
        while True:
            chunks = self.inner.stream(request)
            try:
                first = await anext(chunks)
            except StopAsyncIteration:
                return
            except ProviderError as error:
                await chunks.aclose()
                wait = self.policy.delay(error, attempt)
                if wait is None:
                    error.attempts = attempt
                    asked = error.retry_after
                    if (
                        error.retryable
                        and asked is not None
                        and asked > self.policy.max_retry_after
                    ):
                        error.message += (
                            f" (the provider asked to wait {asked:g} s before retrying, more "
                            f"than max_retry_after = {self.policy.max_retry_after:g} s)"
                        )
                    raise
                log.warning(
                    "%s: %s; retry %d of %d in %.2f s",
                    self.name,
                    error.message,
                    attempt,
                    self.policy.max_retries,
                    wait,
                )
                await asyncio.sleep(wait)
                attempt += 1
                continue
            break
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        except ProviderError as error:
            error.attempts = attempt
            raise
        finally:
            await chunks.aclose()

    async def warm_up(self) -> None:
        await self.inner.warm_up()

    async def aclose(self) -> None:
        await self.inner.aclose()
