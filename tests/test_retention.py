"""Retention: the rule, the config table, the periodic sweep, and a real daemon sweeping."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from copilotd.admin.retention import (
    RetentionPolicy,
    RetentionRule,
    Selection,
    format_duration,
    load_retention_policy,
    parse_duration,
    select,
)
from copilotd.config import ConfigError, ConfigFile
from copilotd.events import SessionMetadata
from copilotd.runtime.sidecars import RetentionSweeper
from tests.support.cli import MadeSession, copilotd, ok, write_export
from tests.support.daemon_process import DaemonProcess

DAY = timedelta(days=1)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", 30 * DAY),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("2w", 14 * DAY),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 7D ", 7 * DAY),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_duration(format_duration(expected)) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "-1d", "1.5d", "30 days"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="a duration like 30d, 12h"):
        parse_duration(text)


def session(
    session_id: str, age: timedelta, *, pinned: bool = False, running: bool = False
) -> SessionMetadata:
    metadata = SessionMetadata(session_id=session_id, pinned=pinned, turn_running=running)
    metadata.modified_time.FromDatetime(NOW - age)
    return metadata


SESSIONS = [  # most recently active first, as the store lists them
    session("today", timedelta(hours=1)),
    session("week", 7 * DAY),
    session("busy-old", 40 * DAY, running=True),
    session("month", 31 * DAY),
    session("pinned-old", 60 * DAY, pinned=True),
    session("year", 365 * DAY),
]


def selected(rule: RetentionRule) -> tuple[list[str], int]:
    result = select(SESSIONS, rule, NOW)
    return [m.session_id for m in result.sessions], result.pinned_kept


def test_age_rule() -> None:
    assert selected(RetentionRule(max_age=30 * DAY)) == (["month", "year"], 1)
    assert selected(RetentionRule(max_age=2 * DAY)) == (["week", "month", "year"], 1)


def test_count_rule_counts_every_session_but_spares_pinned_and_running() -> None:
    assert selected(RetentionRule(max_sessions=2)) == (["month", "year"], 1)
    assert selected(RetentionRule(max_sessions=0)) == (["today", "week", "month", "year"], 1)
    assert selected(RetentionRule(max_sessions=10)) == ([], 0)


def test_both_limits_must_select() -> None:
    # Older than a week AND beyond the 4 most recent.
    assert selected(RetentionRule(max_age=6 * DAY, max_sessions=4)) == (["year"], 1)


def test_a_rule_needs_a_limit() -> None:
    with pytest.raises(ValueError, match="needs max_age and/or max_sessions"):
        RetentionRule()


def config(**table: object) -> ConfigFile:
    return ConfigFile(Path("/etc/c.toml"), {"retention": table})


def test_policy_from_config() -> None:
    assert load_retention_policy(ConfigFile()).rule is None
    policy = load_retention_policy(config(max_age="30d", max_sessions=100))
    assert policy.rule == RetentionRule(max_age=30 * DAY, max_sessions=100)
    assert policy.sweep_interval == timedelta(hours=1)
    assert load_retention_policy(config(max_age="1d", sweep_interval="5m")).sweep_interval == (
        timedelta(minutes=5)
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"max_age": "30x"}, r"\[retention\]: max_age: '30x' is not a duration"),
        ({"max_age": 30}, r"max_age must be a string like \"30d\""),
        ({"max_sessions": -1}, "max_sessions must be a whole number 0 or more"),
        ({"max_sessions": True}, "max_sessions must be a whole number"),
        (
            {"maxage": "30d"},
            "unknown key 'maxage' \\(did you mean 'max_age'\\?\\); "
            "the known ones: max_age, max_sessions, sweep_interval",
        ),
        ({"sweep_interval": "1h"}, "sweep_interval is set but max_age/max_sessions not"),
        ({"max_age": "0s"}, "max_age must be longer than 0s"),
    ],
)
def test_config_errors_name_the_file_table_and_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as failure:
        load_retention_policy(config(**table))
    assert str(failure.value).startswith("/etc/c.toml: [retention]")


async def test_the_sweeper_sweeps_again_every_interval() -> None:
    rules: list[RetentionRule] = []
    third = asyncio.Event()

    async def prune(rule: RetentionRule) -> Selection:
        rules.append(rule)
        if len(rules) == 3:
            third.set()
        if len(rules) == 2:
            raise RuntimeError("a failed sweep does not stop the next ones")
        return Selection([], 0)

    rule = RetentionRule(max_age=DAY)
    sweeper = RetentionSweeper(RetentionPolicy(rule, timedelta(milliseconds=10)), prune)
    sweeper.start()
    await third.wait()
    await sweeper.stop()
    assert rules[:3] == [rule, rule, rule]


# -- a real daemon --------------------------------------------------------------------------


def test_the_sweep_deletes_what_the_dry_run_showed(short_tmp: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text('[retention]\nmax_age = "30d"\nsweep_interval = "1h"\n')
    daemon = DaemonProcess(short_tmp, ["--config", str(config_file)]).start()
    try:
        daemon.wait_for_output("retention sweep: deleted 0 session(s)")  # the sweep at start
        export = write_export(
            tmp_path / "made.jsonl",
            [
                MadeSession("old-a", 40 * DAY),
                MadeSession("old-b", 60 * DAY),
                MadeSession("old-pinned", 90 * DAY, pinned=True),
                MadeSession("recent", DAY),
            ],
        )
        ok(copilotd(daemon, "import", str(export)))
        status = json.loads(ok(copilotd(daemon, "status", "--json")))
        assert status["retention"] == "delete sessions inactive for more than 30d, swept every 1h"

        # No rule given: the configured one, i.e. what the next sweep deletes.
        preview = ok(copilotd(daemon, "sessions", "prune", "--dry-run"))
        assert preview.startswith("would delete 2 session(s)")
        assert "old-a" in preview and "old-b" in preview and "kept 1 pinned" in preview
        assert daemon.terminate() == 0

        daemon.start()  # sweeps at start
        daemon.wait_for_output("retention sweep: deleted 2 session(s)")
        for session_id in ("old-a", "old-b"):
            daemon.wait_for_output(f"pruned session {session_id}")
        remaining = json.loads(ok(copilotd(daemon, "sessions", "list", "--json")))
        assert [s["session_id"] for s in remaining] == ["recent", "old-pinned"]
    finally:
        daemon.kill()


def test_a_bad_retention_table_stops_the_start(short_tmp: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text('[retention]\nmax_age = "thirty days"\n')
    daemon = DaemonProcess(short_tmp, ["--config", str(config_file)])
    with pytest.raises(RuntimeError, match="did not start") as failure:
        daemon.start()
    assert f"cannot start: {config_file}: [retention]: max_age: 'thirty days'" in str(failure.value)
