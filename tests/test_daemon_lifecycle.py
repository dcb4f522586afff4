"""Starting, stopping and losing the socket: one-line start-up errors,
``copilotd stop``, a deleted socket folder, log lines that cannot be forged."""

from __future__ import annotations

import json
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


# -- what the daemon loaded -----------------------------------------------------------------

SECRET = "sk-inline-" + "7" * 24
CONFIG = f"""
[models]
default = "small"

[providers.local]
type = "openai"
base_url = "http://user:pw@127.0.0.1:9/v1?key=hidden"
api_key = "{SECRET}"
models = ["small", "large"]
"""


def write_config(directory: Path, mode: int) -> Path:
    path = directory / "config.toml"
    path.write_text(CONFIG)
    os.chmod(path, mode)
    return path


def test_status_and_the_log_show_what_was_loaded_without_secrets(short_tmp: Path) -> None:
    config = write_config(short_tmp, 0o600)
    daemon = DaemonProcess(short_tmp, ["--config", str(config)]).start()
    try:
        status = ok(copilotd(daemon, "status"))
        assert f"config:     {config}\n" in status
        assert f"store:      lmdb {daemon.data_dir / 'store'}\n" in status
        assert "provider:   local (openai): small (default), large\n" in status
        as_json = json.loads(ok(copilotd(daemon, "status", "--json")))
        assert as_json["config_file"] == str(config)
        assert as_json["store_backend"] == "lmdb"
        assert [model["id"] for model in as_json["models"]] == ["small", "large"]
        log = "".join(daemon.output)
        assert f"config: {config}\n" in log
        assert f"store: lmdb in {daemon.data_dir / 'store'}\n" in log
        assert (
            "provider local: openai at http://127.0.0.1:9/v1, secret set, models: small, large\n"
        ) in log
        for text in (status, json.dumps(as_json), log):
            assert SECRET not in text and "pw@" not in text and "hidden" not in text
    finally:
        daemon.kill()


def test_status_says_when_no_config_file_was_read(daemon: DaemonProcess) -> None:
    status = ok(copilotd(daemon, "status"))
    assert "config:     none (built-in defaults)\n" in status
    assert "providers:  none configured" in status


def test_a_config_file_others_can_read_with_an_inline_key_is_refused(short_tmp: Path) -> None:
    config = write_config(short_tmp, 0o644)
    line = start_failure(DaemonProcess(short_tmp, ["--config", str(config)]))
    assert line == (
        f"copilotd: cannot start: {config} holds an inline api_key ([providers.local]) and can "
        f"be read by other users (mode 644); run chmod 600 {config}, or name an environment "
        "variable with api_key_env instead"
    )
