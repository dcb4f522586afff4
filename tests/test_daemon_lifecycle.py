"""Starting, stopping and losing the socket: one-line start-up errors,
``copilotd stop``, a deleted socket folder, log lines that cannot be forged."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from copilot_client import CopilotClient, SessionConfig
from tests.support.cli import copilotd, ok
from tests.support.daemon_process import DaemonProcess
from tests.support.privileged import run_as_root_or_skip


def start_failure(daemon: DaemonProcess) -> str:
    """The one line a daemon that cannot start prints (never a traceback)."""
    result = subprocess.run(daemon.command(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("copilotd: "), lines[0]
    return lines[0]


# -- start-up errors ------------------------------------------------------------------------


def test_a_bad_log_level_is_one_line(short_tmp: Path) -> None:
    line = start_failure(DaemonProcess(short_tmp, ["--log-level", "LOUD"]))
    assert "--log-level" in line and "LOUD" in line and "'info'" in line.lower()


def test_a_file_where_the_data_dir_should_be_is_one_line(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp)
    daemon.data_dir.write_text("not a folder")
    line = start_failure(daemon)
    assert line == (
        f"copilotd: cannot start: {daemon.data_dir} exists and is not a folder; move it away "
        "or choose another location with --socket / --data-dir"
    )


@pytest.fixture
def read_only_disk(short_tmp: Path) -> Iterator[Path]:
    """A tmpfs holding an empty folder ``existing``, remounted read-only (root only)."""
    mount_point = short_tmp / "ro"
    mount_point.mkdir()
    run_as_root_or_skip(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
        "mounting a tmpfs",
    )
    try:
        (mount_point / "existing").mkdir(mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_read_only_file_system_is_one_line(short_tmp: Path, read_only_disk: Path) -> None:
    new = DaemonProcess(short_tmp, data_dir=read_only_disk / "new")
    assert start_failure(new) == (
        f"copilotd: cannot start: cannot create {read_only_disk / 'new'}: Read-only file "
        "system; choose a writable location with --socket / --data-dir"
    )
    existing = DaemonProcess(short_tmp, data_dir=read_only_disk / "existing")
    assert start_failure(existing) == (
        "copilotd: cannot start: cannot open the lock file "
        f"{read_only_disk / 'existing' / 'copilotd.lock'}: Read-only file system"
    )


# -- log lines ------------------------------------------------------------------------------


async def test_a_model_name_cannot_forge_a_log_line(daemon: DaemonProcess) -> None:
    forged = "2026-01-01 00:00:00,000 ERROR copilotd: store corrupted"
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        await client.create_session(
            SessionConfig(session_id="forger", model=f"m\n{forged}\r\x1b[2K")
        )
    line = daemon.wait_for_output("created session forger")
    assert line.endswith(f"(model m\\n{forged}\\r\\x1b[2K)\n")
    assert not any(logged.startswith(forged) for logged in daemon.output)


# -- copilotd stop --------------------------------------------------------------------------


def test_stop_stops_that_daemon_only_and_waits_for_its_clean_exit(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp / "a").start()
    bystander = DaemonProcess(short_tmp / "b").start()
    try:
        assert daemon.process is not None and bystander.process is not None
        output = ok(copilotd(daemon, "stop"))
        assert output == f"stopped copilotd (pid {daemon.process.pid})\n"
        # Already exited when stop returned: no waiting here.
        assert daemon.process.poll() == 0
        daemon.wait_for_output("stopped; store closed cleanly")
        assert bystander.process.poll() is None
        again = ok(copilotd(daemon, "stop"))
        assert again == f"copilotd is not running (nothing answers at {daemon.socket_path})\n"
    finally:
        daemon.kill()
        bystander.kill()


# -- a deleted socket folder ----------------------------------------------------------------


def test_a_daemon_whose_socket_folder_is_deleted_exits_so_another_can_serve(
    short_tmp: Path,
) -> None:
    daemon = DaemonProcess(short_tmp).start()
    try:
        assert daemon.process is not None
        shutil.rmtree(daemon.socket_path.parent)  # as logind does at logout
        assert daemon.process.wait(timeout=60) == 0
        daemon.wait_for_output(f"the socket {daemon.socket_path} was removed or replaced")
        successor = DaemonProcess(short_tmp).start()  # same data dir: the lock is free
        successor.kill()
    finally:
        daemon.kill()


def test_a_replaced_socket_is_not_unlinked_by_the_daemon_that_lost_it(short_tmp: Path) -> None:
    daemon = DaemonProcess(short_tmp).start()
    try:
        assert daemon.process is not None
        os.unlink(daemon.socket_path)
        daemon.socket_path.write_text("someone else's")
        assert daemon.process.wait(timeout=60) == 0
        assert daemon.socket_path.read_text() == "someone else's"
    finally:
        daemon.kill()
