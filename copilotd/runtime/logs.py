"""Logging to stderr (the journal, under systemd): plain text, or one JSON object a line."""

from __future__ import annotations

import logging
import sys
from typing import Final

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# JSON keys: time, level, logger, message (plus exc_info when there is one).
JSON_FIELDS = ("asctime", "levelname", "name", "message")
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}
LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# C0 controls and DEL, written as escapes: a value a client chose (a model
# name, a label) must not start a line of its own or rewrite the terminal.
_ESCAPES: Final = {
    code: ("\\n" if code == 10 else "\\r" if code == 13 else f"\\x{code:02x}")
    for code in (*range(32), 127)
    if code != 9
}


class OneLineFormatter(logging.Formatter):
    """Each record's message on one line; a traceback, appended after it, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record).translate(_ESCAPES)


def configure_logging(level: str, *, json: bool = False) -> None:
    """Send the daemon's log records to stderr at ``level``; ``json`` for JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if json:
        # Here, not at the top: the CLI reads LEVELS without loading this.
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(list(JSON_FIELDS), rename_fields=JSON_RENAMES, timestamp=False)
        )
    else:
        handler.setFormatter(OneLineFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The providers' HTTP clients log every request at INFO: one line per model
    # call drowns the daemon's own lines. Their warnings still come through.
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
