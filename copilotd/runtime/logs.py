"""Logging to stderr (the journal, under systemd): plain text, or one JSON object a line."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# JSON keys: time, level, logger, message (plus exc_info when there is one).
JSON_FIELDS = ("asctime", "levelname", "name", "message")
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}


def configure_logging(level: str, *, json: bool = False) -> None:
    """Send the daemon's log records to stderr at ``level``; ``json`` for JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if json:
        handler.setFormatter(
            JsonFormatter(list(JSON_FIELDS), rename_fields=JSON_RENAMES, timestamp=False)
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The providers' HTTP clients log every request at INFO: one line per model
    # call drowns the daemon's own lines. Their warnings still come through.
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
