"""Turning a provider's HTTP failure into a ``ProviderError``, the same way for every SDK.

401/403 are authentication failures and are never retried; 429, 408, 409
and 5xx (529 "overloaded" included), timeouts and dropped connections may be
retried. The message keeps the provider's own words (from its JSON error
body) and says who answered what.
"""

from __future__ import annotations

import email.utils
import http
import time
from collections.abc import Mapping

from copilotd._providers.base import ProviderError

RETRYABLE_STATUSES = frozenset({408, 409, 429})


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
