"""Keeping secrets out of the daemon's log.

API keys and bearer tokens live only in the daemon's memory (see
``copilotd.providers.registry``). They are never written to the store, but
a provider's error message may quote one, and a library's debug log might
print one. Every secret the daemon learns is registered here, and the
formatter installed on the log handlers replaces each of them in the final
text of every record, tracebacks included.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

REDACTED = "[redacted]"
# Shorter strings are not treated as secrets: replacing them would garble the
# log without protecting anything.
MIN_SECRET_LENGTH = 6


class SecretRedactor:
    """The set of secrets to hide, with a reference count per secret."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: Counter[str] = Counter()
        self._ordered: list[str] = []

    def add(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            self._secrets[secret] += 1
            self._reorder()

    def discard(self, secret: str) -> None:
        with self._lock:
            if self._secrets[secret] <= 1:
                self._secrets.pop(secret, None)
            else:
                self._secrets[secret] -= 1
            self._reorder()

    def _reorder(self) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self._ordered = sorted(self._secrets, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


REDACTOR = SecretRedactor()


class RedactingFormatter(logging.Formatter):
    """Formats with ``inner``, then hides every registered secret."""

    def __init__(self, inner: logging.Formatter | None, redactor: SecretRedactor) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.redact(self._inner.format(record))


def install_log_redaction(
    logger: logging.Logger | None = None, redactor: SecretRedactor = REDACTOR
) -> None:
    """Wrap the formatter of every handler of ``logger`` (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter, redactor))
