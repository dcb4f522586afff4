"""Retention: which sessions a rule selects for deletion (the runtime sweeps with it).

Off unless the config file has a ``[retention]`` table::

    [retention]
    max_age = "30d"         # inactive for longer than this ...
    max_sessions = 1000     # ... and not among the 1000 most recently active
    sweep_interval = "1h"   # how often the daemon sweeps (default 1h)

A session is selected when every limit that is set selects it (so
``max_sessions`` alone caps the count, and next to ``max_age`` it keeps at
least that many sessions however old). Pinned sessions and sessions with a
running turn are never selected. ``copilotd sessions prune --dry-run`` shows
what a sweep would delete.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

# The rule and policy are config values, so they live in the leaf; the table's
# rules (durations, which keys) stay here.
from copilotd.config import DEFAULT_SWEEP_INTERVAL, ConfigError, ConfigFile
from copilotd.config import RetentionPolicy as RetentionPolicy
from copilotd.config import RetentionRule as RetentionRule
from copilotd.config import format_duration as format_duration
from copilotd.events import SessionMetadata

log = logging.getLogger(__name__)

TABLE: Final = "retention"
KEYS: Final = ("max_age", "max_sessions", "sweep_interval")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION: Final = re.compile(r"(?:(\d+)([smhdw]))+")
_PART: Final = re.compile(r"(\d+)([smhdw])")
DURATION_HELP: Final = "a duration like 30d, 12h, 90m, 45s, 2w or 1d12h"


def parse_duration(text: str) -> timedelta:
    """``"30d"`` → 30 days; units s, m, h, d, w, combinable (``"1d12h"``).

    Raises ``ValueError`` with a message that shows the accepted form.
    """
    compact = text.strip().lower().replace(" ", "")
    if not _DURATION.fullmatch(compact):
        raise ValueError(f"{text!r} is not {DURATION_HELP}")
    seconds = sum(int(number) * _UNITS[unit] for number, unit in _PART.findall(compact))
    return timedelta(seconds=seconds)


def load_retention_policy(config: ConfigFile) -> RetentionPolicy:
    """Read ``[retention]``; errors name the file, the table and the key."""
    table = config.table(TABLE, KEYS)
    where = f"{config.where()}: [{TABLE}]"
    max_age = _duration_setting(table, "max_age", where)
    sweep_interval = _duration_setting(table, "sweep_interval", where)
    max_sessions = table.get("max_sessions")
    if max_sessions is not None and (
        not isinstance(max_sessions, int) or isinstance(max_sessions, bool) or max_sessions < 0
    ):
        raise ConfigError(f"{where}: max_sessions must be a whole number 0 or more")
    if max_age is None and max_sessions is None:
        if sweep_interval is not None:
            raise ConfigError(f"{where}: sweep_interval is set but max_age/max_sessions not")
        return RetentionPolicy()
    return RetentionPolicy(
        RetentionRule(max_age=max_age, max_sessions=max_sessions),
        sweep_interval or DEFAULT_SWEEP_INTERVAL,
    )


def _duration_setting(table: dict[str, Any], key: str, where: str) -> timedelta | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f'{where}: {key} must be a string like "30d", not {value!r}')
    try:
        duration = parse_duration(value)
    except ValueError as error:
        raise ConfigError(f"{where}: {key}: {error}") from None
    if duration <= timedelta(0):
        raise ConfigError(f"{where}: {key} must be longer than 0s")
    return duration


@dataclass(frozen=True)
class Selection:
    """What a rule selects: the sessions, and how many pinned ones it spared."""

    sessions: list[SessionMetadata]
    pinned_kept: int


def _cutoff(now: datetime, max_age: timedelta) -> datetime:
    """``now - max_age``; an age reaching back before year 1 selects nothing by age
    (the subtraction would raise OverflowError)."""
    earliest = datetime.min.replace(tzinfo=now.tzinfo)
    if max_age >= now - earliest:
        return earliest
    return now - max_age


def select(
    newest_first: Iterable[SessionMetadata], rule: RetentionRule, now: datetime
) -> Selection:
    """The sessions ``rule`` selects, from all sessions given most recently active first."""
    cutoff = _cutoff(now, rule.max_age) if rule.max_age is not None else None
    selected: list[SessionMetadata] = []
    pinned_kept = 0
    for rank, metadata in enumerate(newest_first):
        if rule.max_sessions is not None and rank < rule.max_sessions:
            continue
        if cutoff is not None and metadata.modified_time.ToDatetime(tzinfo=now.tzinfo) >= cutoff:
            continue
        if metadata.turn_running:
            continue
        if metadata.pinned:
            pinned_kept += 1
            continue
        selected.append(metadata)
    return Selection(selected, pinned_kept)
