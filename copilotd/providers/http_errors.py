"""Turning a provider's HTTP failure into a ``ProviderError``, the same way for every SDK.

401/403 are authentication failures and are never retried; 429, 408, 409
and 5xx (529 "overloaded" included), timeouts and dropped connections may be
retried. The message keeps the provider's own words (from its JSON error
body) and says who answered what. ``sdk_errors`` is the one place the SDKs'
exceptions are caught.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import time
from collections.abc import Iterator, Mapping
from types import ModuleType

import httpx2

from copilotd.providers.base import ProviderError

RETRYABLE_STATUSES = frozenset({408, 409, 429})


@contextlib.contextmanager
def sdk_errors(sdk: ModuleType, label: str, timeout: float) -> Iterator[None]:
    """Raise the ``ProviderError`` for any failure of the ``openai`` or ``anthropic`` SDK.

    Both SDKs name their exceptions alike (``APIStatusError``,
    ``APITimeoutError``, ``APIConnectionError``, ``APIError``). Transport
    errors met while reading a stream can come through unwrapped (the
    Anthropic SDK lets them), so those of their HTTP client are mapped too.
    """
    try:
        yield
    except sdk.APIStatusError as error:
        raise status_error(
            label, error.status_code, error.body, error.response.headers, error.message
        ) from None
    except (sdk.APITimeoutError, httpx2.TimeoutException):
        raise timeout_error(label, timeout) from None
    except (sdk.APIConnectionError, httpx2.TransportError) as error:
        raise connection_error(label, error) from None
    except sdk.APIError as error:
        raise ProviderError(f"{label}: {error.message}") from None


def status_error(
    label: str, status: int, body: object, headers: Mapping[str, str], fallback: str
) -> ProviderError:
    """The error for an HTTP error answer ``status`` from the provider named ``label``."""
    detail = body_message(body) or fallback
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    message = f"{label} answered {status} {phrase}: {detail}"
    if status in (401, 403):
        return ProviderError(
            message + " (check the API key or token; this is not retried)",
            error_type="authentication",
            status_code=status,
        )
    retryable = status in RETRYABLE_STATUSES or status >= 500
    return ProviderError(
        message,
        error_type="rate_limit" if status == 429 else "provider",
        status_code=status,
        retryable=retryable,
        retry_after=retry_after_seconds(headers) if retryable else None,
    )


def connection_error(label: str, error: BaseException) -> ProviderError:
    """A connection refused, reset or dropped before the answer was complete."""
    cause = error.__cause__
    detail = f"{error} ({cause})" if cause is not None and str(cause) else str(error)
    return ProviderError(
        f"{label}: connection failed: {detail}", error_type="connection", retryable=True
    )


def timeout_error(label: str, timeout: float) -> ProviderError:
    return ProviderError(
        f"{label}: no answer within {timeout:g} s (the provider's timeout setting)",
        error_type="timeout",
        retryable=True,
    )


def body_message(body: object) -> str:
    """The message of a JSON error body: ``{"error": {"message": ...}}`` or ``{"message": ...}``."""
    if isinstance(body, Mapping):
        inner = body.get("error")
        if isinstance(inner, Mapping) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    if isinstance(body, str):
        return body
    return ""


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a provider asked: ``retry-after-ms``, else ``Retry-After`` (seconds or a date)."""
    lowered = {key.lower(): value for key, value in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
