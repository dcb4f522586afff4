"""Trying it as a new user would: running things again, many sessions, words they know.

The main example run again after an interruption, restores close together,
``prune --json`` on a cut-short list, ``sessions list`` on a terminal, and
errors that name the commands to run.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from copilot_client import CopilotClient
from copilot_client.proto.admin.v1 import admin_pb2
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilotd.cli.sessions import TERMINAL_ROWS, prune_report
from tests.support.cli import CLI_TIMEOUT, copilotd, ok, one_line_error
from tests.support.daemon_process import DaemonProcess
from tests.support.example import EXAMPLE, run_step


def test_the_example_runs_again_after_an_interrupted_run(daemon: DaemonProcess) -> None:
    run_step("create", daemon.env)  # then "interrupted": the resume step never ran
    again = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    assert again.returncode == 0, again.stderr
    assert "user-123-conversation is left from an earlier run: continuing it" in again.stdout
    assert "Traceback" not in again.stderr


async def test_restores_in_the_same_second_keep_every_replaced_store(
    daemon: DaemonProcess, short_tmp: Path
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        await client.create_session(session_id="backed-up")
    backup = short_tmp / "backup"
    ok(copilotd(daemon, "backup", str(backup)))
    target = short_tmp / "target"
    restore = ("restore", str(backup), "--data-dir", str(target))
    ok(copilotd(daemon, *restore))  # now there is a store to replace
    # The names the next restores would take within the coming seconds are taken
    # (as by restores a moment ago), each holding a store.
    now = datetime.now(UTC)
    for second in range(int(CLI_TIMEOUT)):
        taken = target / f"store.replaced-{now + timedelta(seconds=second):%Y%m%dT%H%M%SZ}"
        taken.mkdir()
        (taken / "data.mdb").write_bytes(b"an earlier store")
    reports = [ok(copilotd(daemon, *restore)) for _ in range(2)]
    kept = sorted(p for p in target.iterdir() if p.name.startswith("store.replaced-"))
    assert len(kept) == int(CLI_TIMEOUT) + 2
    for report in reports:
        assert "restored 1 session(s)" in report
        kept_now = Path(report.rsplit("the previous store is kept in ", 1)[1].strip())
        # A name of its own beside the taken one, holding the store it replaced.
        assert re.fullmatch(r"store\.replaced-\d{8}T\d{6}Z-\d+", kept_now.name), kept_now
        assert (kept_now / "data.mdb").read_bytes() != b"an earlier store"
    assert len({report.rsplit(" ", 1)[1] for report in reports}) == 2


def test_prune_json_says_when_its_list_is_cut_short() -> None:
    listed = [pb.SessionMetadata(session_id=f"s{n}") for n in range(3)]
    cut = admin_pb2.PruneSessionsResponse(sessions=listed, session_count=5, pinned_kept=1)
    report = prune_report(cut, dry_run=True)
    assert report["truncated"] is True
    assert report["session_count"] == 5
    assert [s["session_id"] for s in report["sessions"]] == ["s0", "s1", "s2"]
    whole = admin_pb2.PruneSessionsResponse(sessions=listed, session_count=3)
    assert prune_report(whole, dry_run=False)["truncated"] is False


def run_on_a_terminal(daemon: DaemonProcess, *args: str) -> tuple[str, str]:
    """``copilotd ARGS`` with its stdout on a pseudo-terminal: (stdout, stderr)."""
    leader, follower = pty.openpty()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "copilotd", *args],
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.PIPE,
            env=daemon.env,
            text=True,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, errors = child.communicate(timeout=CLI_TIMEOUT)
    finally:
        os.close(leader)
    assert child.returncode == 0, errors
    return b"".join(chunks).decode(), errors


async def test_sessions_list_on_a_terminal_shows_a_page_and_how_to_see_more(
    daemon: DaemonProcess,
) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        for n in range(TERMINAL_ROWS + 2):
            await client.create_session(session_id=f"s{n:03}")
    shown, hint = run_on_a_terminal(daemon, "sessions", "list")
    rows = shown.strip().splitlines()
    assert len(rows) == 1 + TERMINAL_ROWS  # the header, then one page
    assert rows[1].startswith(f"s{TERMINAL_ROWS + 1:03}")  # most recently active first
    assert "there are more: `copilotd sessions list --limit N`" in hint
    piped = ok(copilotd(daemon, "sessions", "list")).strip().splitlines()
    assert len(piped) == 1 + TERMINAL_ROWS + 2  # a pipe gets them all
    limited, _ = run_on_a_terminal(daemon, "sessions", "list", "--limit", str(TERMINAL_ROWS + 2))
    assert len(limited.strip().splitlines()) == 1 + TERMINAL_ROWS + 2


def test_errors_name_commands_not_rpcs(daemon: DaemonProcess) -> None:
    line = one_line_error(copilotd(daemon, "sessions", "show", "nope"))
    assert "no session with id 'nope'" in line
    assert "`copilotd sessions list`" in line
    assert "ListSessions" not in line and "CreateSession" not in line
