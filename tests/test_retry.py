"""Retry decisions, Retry-After parsing, error classification and log redaction."""

from __future__ import annotations

import email.utils
import logging

import pytest

from copilotd.providers import ProviderError, RetryPolicy
from copilotd.providers.http_errors import retry_after_seconds, status_error
from copilotd.redaction import RedactingFormatter, SecretRedactor, install_log_redaction

POLICY = RetryPolicy(max_retries=3, initial_delay=0.5, max_delay=4.0, max_retry_after=30.0)


def retryable(retry_after: float | None = None) -> ProviderError:
    return ProviderError("busy", retryable=True, retry_after=retry_after)


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    assert [POLICY.backoff(n, rng=lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        4.0,
    ]
    assert [POLICY.backoff(n, rng=lambda: 0.0) for n in (1, 2, 3)] == [0.25, 0.5, 1.0]
    for n in range(1, 6):
        ceiling = min(4.0, 0.5 * 2 ** (n - 1))
        assert ceiling / 2 <= POLICY.backoff(n) <= ceiling


def test_delay_is_bounded_and_honours_retry_after() -> None:
    assert POLICY.delay(ProviderError("bad request"), 1) is None  # not retryable
    assert POLICY.delay(retryable(), 4) is None  # only 3 retries
    wait = POLICY.delay(retryable(), 3)
    assert wait is not None and 1.0 <= wait <= 2.0
    assert POLICY.delay(retryable(retry_after=7.0), 1) == 7.0
    assert POLICY.delay(retryable(retry_after=0.0), 1) == pytest.approx(0.5, abs=0.25)
    assert POLICY.delay(retryable(retry_after=31.0), 1) is None  # asked to wait too long


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"Retry-After": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert retry_after_seconds({"Retry-After": "soon"}) is None
    assert retry_after_seconds({}) is None
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert retry_after_seconds({"Retry-After": date}, now=1_000_000.0) == pytest.approx(30.0)
    assert retry_after_seconds({"Retry-After": "-5"}) == 0.0


@pytest.mark.parametrize(
    ("status", "error_type", "is_retryable"),
    [
        (400, "provider", False),
        (401, "authentication", False),
        (403, "authentication", False),
        (404, "provider", False),
        (408, "provider", True),
        (429, "rate_limit", True),
        (500, "provider", True),
        (503, "provider", True),
        (529, "provider", True),
    ],
)
def test_status_classification(status: int, error_type: str, is_retryable: bool) -> None:
    body = {"error": {"message": "the provider's words", "type": "x"}}
    error = status_error("openai provider 'p'", status, body, {"Retry-After": "3"}, "fallback")
    assert (error.error_type, error.retryable, error.status_code) == (
        error_type,
        is_retryable,
        status,
    )
    assert error.message.startswith(f"openai provider 'p' answered {status} ")
    assert "the provider's words" in error.message
    assert error.retry_after == (3.0 if is_retryable else None)
    anthropic = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert "Overloaded" in status_error("a", status, anthropic, {}, "fallback").message
    assert "fallback" in status_error("a", status, None, {}, "fallback").message


def test_log_redaction_covers_messages_and_tracebacks() -> None:
    redactor = SecretRedactor()
    redactor.add("sk-secret-123456")
    redactor.add("short")  # too short to be a secret: left alone
    logger = logging.getLogger("test_redaction")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        install_log_redaction(logger, redactor)
        install_log_redaction(logger, redactor)  # idempotent
        assert isinstance(handler.formatter, RedactingFormatter)
        logger.warning("key %s is short", "sk-secret-123456")
        try:
            raise RuntimeError("headers: Authorization: Bearer sk-secret-123456")
        except RuntimeError:
            logger.exception("call failed")
        redactor.discard("sk-secret-123456")
        logger.warning("after discard sk-secret-123456")
    finally:
        logger.removeHandler(handler)
    assert records[0] == "WARNING key [redacted] is short"
    assert "Bearer [redacted]" in records[1] and "sk-secret-123456" not in records[1]
    assert records[2].endswith("sk-secret-123456")
