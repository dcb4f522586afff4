"""Turning a provider's HTTP failure into a ``ProviderError``, the same way for every SDK.

401/403 are authentication failures and are never retried; 429, 408, 409
and 5xx (529 "overloaded" included), timeouts and dropped connections may be
retried. The message keeps the provider's own words (from its JSON error
body, in any of the common shapes ``body_message`` knows) and says who
answered what. ``sdk_errors`` is the one place the SDKs'
exceptions are caught.
"""

from __future__ import annotations

import contextlib
import email.utils
import http
import json
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
    # A body in no shape we know is still better shown than the SDK's bare "Error code: 401".
    detail = body_message(body) or _compact(body) or fallback
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


# Where servers put the words of an error, in the order they are looked for:
# OpenAI and Anthropic nest {"error": {"message"}}; FastAPI-based servers
# (vLLM, LiteLLM) answer {"detail": "..."} or a list of {"msg"}; Ollama and
# others {"error": "..."}; OAuth-style {"error_description"}.
_MESSAGE_KEYS = ("message", "detail", "error_description", "msg", "error", "errors", "title")
_MAX_DEPTH = 4


def body_message(body: object, _depth: int = 0) -> str:
    """The human words in a provider's error body, whatever common shape it has.

    Strings are taken as they are; mappings are searched by ``_MESSAGE_KEYS``;
    lists (validation errors) give their items' messages joined.
    """
    if isinstance(body, str):
        return body.strip()
    if _depth >= _MAX_DEPTH:
        return ""
    if isinstance(body, Mapping):
        for key in _MESSAGE_KEYS:
            found = body_message(body.get(key), _depth + 1)
            if found:
                return found
    elif isinstance(body, list):
        found_all = (body_message(item, _depth + 1) for item in body)
        return "; ".join(found for found in found_all if found)
    return ""


def _compact(body: object, limit: int = 500) -> str:
    if not body:
        return ""
    try:
        text = json.dumps(body, ensure_ascii=False)
    except (TypeError, ValueError):
        text = str(body)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
