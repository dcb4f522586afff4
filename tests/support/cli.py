"""Running the ``copilotd`` command as a real process, and export files made to order."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from copilotd import events as ev
from copilotd.admin.export_format import ExportWriter
from copilotd.events import SessionEvent, SessionMetadata
from tests.support.daemon_process import DaemonProcess, own_config_env

CLI_TIMEOUT = 60.0


def copilotd(
    daemon: DaemonProcess | None,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``copilotd ARGS`` in a child process, finding ``daemon`` through the environment.

    Its config home is the daemon's, else an empty one of its own: never the developer's.
    """
    with tempfile.TemporaryDirectory(prefix="cpd-config") as config_home:
        base = daemon.env if daemon is not None else own_config_env(Path(config_home))
        return subprocess.run(
            [sys.executable, "-m", "copilotd", *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            env={**base, **(env or {})},
            timeout=CLI_TIMEOUT,
        )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The command's stdout, after checking it succeeded."""
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}{result.stdout}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``copilotd: …`` line a failed command prints."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("copilotd: "), lines[0]
    return lines[0]


@dataclass(frozen=True)
class MadeSession:
    session_id: str
    inactive_for: timedelta
    pinned: bool = False
    prompts: Sequence[str] = ("hello",)


def made_history(made: MadeSession, now: datetime) -> tuple[SessionMetadata, list[SessionEvent]]:
    """A finished conversation whose last event is ``made.inactive_for`` old."""
    last = now - made.inactive_for
    events = [ev.make_event(ev.SESSION_START, session_id=made.session_id, model="offline")]
    for prompt in made.prompts:
        user = ev.make_event(ev.USER_MESSAGE, content=prompt)
        turn = ev.new_id()
        events += [
            user,
            ev.make_event(ev.ASSISTANT_TURN_START, turn_id=turn, user_message_id=user.id),
            ev.make_event(ev.ASSISTANT_MESSAGE, content=f"answer to {prompt}", turn_id=turn),
            ev.make_event(
                ev.ASSISTANT_TURN_END,
                turn_id=turn,
                user_message_id=user.id,
                reason=ev.TurnEndReason.TURN_END_REASON_COMPLETED,
            ),
        ]
    previous = ""
    for position, event in enumerate(events, start=1):
        event.sequence = position
        event.parent_id = previous
        stamp = last - timedelta(seconds=len(events) - position)
        event.timestamp.FromDatetime(stamp)
        previous = event.id
    metadata = SessionMetadata(session_id=made.session_id, model="offline", pinned=made.pinned)
    metadata.start_time.CopyFrom(events[0].timestamp)
    return metadata, events


def write_export(path: Path, sessions: Sequence[MadeSession]) -> Path:
    """An export file holding ``sessions``, with the ages and pins asked for."""
    now = datetime.now(UTC)
    with path.open("w", encoding="utf-8") as handle:
        writer = ExportWriter(handle, producer="tests")
        writer.begin()
        for made in sessions:
            metadata, events = made_history(made, now)
            writer.session(metadata, len(events))
            for event in events:
                writer.event(made.session_id, event)
        writer.end()
    return path
