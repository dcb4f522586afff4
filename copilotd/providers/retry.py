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
import random
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from copilotd.providers.base import ChatChunk, ChatRequest, ModelProvider, ProviderError

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how long to wait before trying a failed request again.

    Attributes:
        max_retries: retries after the first attempt (0: none).
        initial_delay: the first backoff, in seconds; doubled on every retry.
        max_delay: cap on a backoff.
        max_retry_after: the longest ``Retry-After`` honoured; a provider that
            asks for a longer wait gets no retry (the error is reported now).
    """

    max_retries: int = 3
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """The wait before retry number ``retry`` (1, 2, …): exponential, with jitter.

        A random point in the upper half of ``min(max_delay, initial_delay *
        2 ** (retry - 1))``, so that clients failing together spread out.
        """
        ceiling = min(self.max_delay, self.initial_delay * 2.0 ** (retry - 1))
        return ceiling * (0.5 + 0.5 * rng())

    def delay(self, error: ProviderError, retry: int) -> float | None:
        """Seconds to wait before retry number ``retry``, or None to give up."""
        if not error.retryable or retry > self.max_retries:
            return None
        backoff = self.backoff(retry)
        if error.retry_after is None:
            return backoff
        if error.retry_after > self.max_retry_after:
            return None
        return max(error.retry_after, backoff)


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
