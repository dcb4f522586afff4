"""``copilotd status`` and ``copilotd sessions …`` against a real daemon, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from copilot_client import CopilotClient
from tests.support.cli import MadeSession, copilotd, ok, one_line_error, write_export
from tests.support.daemon_process import DaemonProcess

DAY = timedelta(days=1)


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        yield client


async def talk(client: CopilotClient, session_id: str, *prompts: str) -> None:
    session = await client.create_session(session_id=session_id)
    for prompt in prompts:
        await session.send_and_wait(prompt)
    await session.destroy()


def listed(daemon: DaemonProcess, *args: str) -> list[str]:
    return [
        s["session_id"]
        for s in json.loads(ok(copilotd(daemon, "sessions", "list", "--json", *args)))
    ]


def import_made(daemon: DaemonProcess, tmp_path: Path, *sessions: MadeSession) -> None:
    ok(copilotd(daemon, "import", str(write_export(tmp_path / "made.jsonl", sessions))))


# -- status -----------------------------------------------------------------------------


async def test_status_of_a_running_daemon(daemon: DaemonProcess, client: CopilotClient) -> None:
    await talk(client, "s1", "hello")
    await talk(client, "s2", "hi")
    report = json.loads(ok(copilotd(daemon, "status", "--json")))
    assert report["running"] is True
    assert daemon.process is not None and report["pid"] == daemon.process.pid
    assert report["version"] == await client.ping()
    assert report["socket"] == str(daemon.socket_path)
    assert report["data_dir"] == str(daemon.data_dir)
    assert report["sessions"] == 2
    assert report["store"] == f"lmdb {daemon.data_dir / 'store'}"
    assert report["store_bytes"] > 0 and report["store_file_bytes"] > 0
    assert report["retention"] == "off" and report["metrics"] is None

    text = ok(copilotd(daemon, "status"))
    assert f"is running (pid {report['pid']}" in text
    assert f"socket:     {daemon.socket_path}" in text
    assert f"store:      lmdb {daemon.data_dir / 'store'}\n" in text
    assert "sessions:   2 (0 turn(s) running)" in text


def test_status_of_a_stopped_daemon_exits_3(short_tmp: Path) -> None:
    stopped = DaemonProcess(short_tmp)
    result = copilotd(stopped, "status")
    assert result.returncode == 3
    assert f"copilotd is not running (nothing answers at {stopped.socket_path})" in result.stdout
    assert json.loads(copilotd(stopped, "status", "--json").stdout)["running"] is False


def test_a_session_command_without_daemon_fails_in_one_line(short_tmp: Path) -> None:
    stopped = DaemonProcess(short_tmp)
    line = one_line_error(copilotd(stopped, "sessions", "list"))
    assert str(stopped.socket_path) in line
    assert "copilotd serve" in line  # says how to start it
    assert not stopped.socket_path.exists()  # and never starts one itself


# -- list and show ------------------------------------------------------------------------


async def test_list_table_json_limit_and_older_than(
    daemon: DaemonProcess, client: CopilotClient, tmp_path: Path
) -> None:
    import_made(
        daemon,
        tmp_path,
        MadeSession("old", 40 * DAY, prompts=["from long ago"]),
        MadeSession("older", 50 * DAY),
    )
    await talk(client, "fresh", "what is new")

    assert listed(daemon) == ["fresh", "old", "older"]
    assert listed(daemon, "--limit", "2") == ["fresh", "old"]
    assert listed(daemon, "--older-than", "30d") == ["old", "older"]
    assert listed(daemon, "--older-than", "45d") == ["older"]
    assert listed(daemon, "--older-than", "45d", "--limit", "1") == ["older"]

    entry = json.loads(ok(copilotd(daemon, "sessions", "list", "--json")))[1]
    assert entry["message_count"] == 2 and entry["summary"] == "from long ago"
    assert entry["last_sequence"] == 5 and entry["pinned"] is False

    table = ok(copilotd(daemon, "sessions", "list")).splitlines()
    assert table[0].split() == ["ID", "LAST", "ACTIVE", "AGE", "MSGS", "MODEL", "PIN", "SUMMARY"]
    assert [row.split()[0] for row in table[1:]] == ["fresh", "old", "older"]
    assert "40d" in table[2] and "from long ago" in table[2]


async def test_a_reader_that_goes_away_is_no_error_message(
    daemon: DaemonProcess, client: CopilotClient
) -> None:
    await talk(client, "a", "x")
    exit_code, stderr = list_into_closed_pipe(daemon)
    assert (exit_code, stderr) == (1, "")  # like `copilotd sessions list | head -0`


def list_into_closed_pipe(daemon: DaemonProcess) -> tuple[int, str]:
    read_end, write_end = os.pipe()
    os.close(read_end)  # before the command starts: its first write meets a closed pipe
    try:
        result = subprocess.run(
            [sys.executable, "-m", "copilotd", "sessions", "list"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=daemon.env,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    return result.returncode, result.stderr


def test_usage_errors_are_one_line_too(daemon: DaemonProcess) -> None:
    result = copilotd(daemon, "sessions", "list", "--older-than", "30x")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "'30x' is not a duration like 30d" in line
    assert line.endswith(" sessions list --help`)")  # where to read more
    assert "No such command 'lst'" in one_line_error(copilotd(daemon, "sessions", "lst"))
    assert copilotd(daemon, "--version").stdout.startswith("copilotd, version ")


async def test_show_prints_metadata_and_transcript(
    daemon: DaemonProcess, client: CopilotClient
) -> None:
    await talk(client, "chat", "first question", "second question")
    text = ok(copilotd(daemon, "sessions", "show", "chat"))
    head, transcript = text.split("\n\n", 1)
    assert "session:      chat" in head and "messages:     4" in head and "pinned:       no" in head
    lines = transcript.splitlines()
    assert lines[0].endswith("-- session started (model offline)")
    assert [line.split("] ", 1)[1].split(":")[0] for line in lines[1:]] == [
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    assert lines[3].endswith("user: second question")
    assert '"first question"' in lines[4]  # the answer quotes the earlier message

    shown = json.loads(ok(copilotd(daemon, "sessions", "show", "chat", "--json")))
    assert shown["session"]["last_sequence"] == len(shown["events"]) == 9
    # Showing is reading: no session.resume was recorded.
    assert (await client.get_session_metadata("chat")).last_sequence == 9  # type: ignore[union-attr]


def test_show_of_a_missing_session(daemon: DaemonProcess) -> None:
    line = one_line_error(copilotd(daemon, "sessions", "show", "nope"))
    assert "no session with id 'nope'" in line


# -- delete -----------------------------------------------------------------------------


async def test_delete_with_yes(daemon: DaemonProcess, client: CopilotClient) -> None:
    await talk(client, "a", "x")
    await talk(client, "b", "y")
    assert ok(copilotd(daemon, "sessions", "delete", "a", "--yes")) == "deleted a\n"
    assert listed(daemon) == ["b"]
    assert "no session with id 'a'" in one_line_error(
        copilotd(daemon, "sessions", "delete", "a", "--yes")
    )


async def test_delete_without_yes_from_a_pipe_refuses(
    daemon: DaemonProcess, client: CopilotClient
) -> None:
    await talk(client, "a", "x")
    line = one_line_error(copilotd(daemon, "sessions", "delete", "a", stdin="y\n"))
    assert "pass --yes" in line
    assert listed(daemon) == ["a"]


def run_on_terminal(daemon: DaemonProcess, args: list[str], answer: str) -> tuple[int, str]:
    """Run the CLI with a terminal as stdin (a pty), answer its question, return exit and output."""
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "copilotd", *args],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=daemon.env,
            text=True,
        )
        os.write(controller, answer.encode())
        out, err = process.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    return process.returncode, out + err


async def test_delete_asks_on_a_terminal(daemon: DaemonProcess, client: CopilotClient) -> None:
    await talk(client, "a", "x")
    code, output = run_on_terminal(daemon, ["sessions", "delete", "a"], "n\n")
    assert code == 0 and "Delete session a (2 messages" in output and "kept a" in output
    assert listed(daemon) == ["a"]
    code, output = run_on_terminal(daemon, ["sessions", "delete", "a"], "y\n")
    assert code == 0 and "deleted a" in output
    assert listed(daemon) == []


# -- pin and prune ------------------------------------------------------------------------


async def test_pin_and_unpin(daemon: DaemonProcess, client: CopilotClient) -> None:
    await talk(client, "a", "x")
    assert ok(copilotd(daemon, "sessions", "pin", "a")) == "pinned a\n"
    metadata = await client.get_session_metadata("a")
    assert metadata is not None and metadata.pinned
    assert json.loads(ok(copilotd(daemon, "sessions", "list", "--json")))[0]["pinned"] is True
    assert ok(copilotd(daemon, "sessions", "unpin", "a")) == "unpinned a\n"
    metadata = await client.get_session_metadata("a")
    assert metadata is not None and not metadata.pinned
    assert "no session with id 'b'" in one_line_error(copilotd(daemon, "sessions", "pin", "b"))


async def test_prune_dry_run_deletes_nothing_and_prune_keeps_pinned(
    daemon: DaemonProcess, client: CopilotClient, tmp_path: Path
) -> None:
    import_made(
        daemon,
        tmp_path,
        MadeSession("old-1", 40 * DAY),
        MadeSession("old-2", 60 * DAY),
        MadeSession("old-pinned", 90 * DAY, pinned=True),
        MadeSession("recent", 2 * DAY),
    )
    await talk(client, "today", "hi")
    before = listed(daemon)

    dry = json.loads(
        ok(copilotd(daemon, "sessions", "prune", "--older-than", "30d", "--dry-run", "--json"))
    )
    assert [s["session_id"] for s in dry["sessions"]] == ["old-1", "old-2"]
    assert dry["session_count"] == 2 and dry["truncated"] is False and dry["pinned_kept"] == 1
    text = ok(copilotd(daemon, "sessions", "prune", "--older-than", "30d", "--dry-run"))
    assert text.startswith("would delete 2 session(s)")
    assert "kept 1 pinned session(s)" in text
    assert listed(daemon) == before  # a dry run deletes nothing

    # --keep: the N most recent stay whatever their age; with --older-than both must hold.
    kept = json.loads(
        ok(
            copilotd(
                daemon,
                "sessions",
                "prune",
                "--older-than",
                "30d",
                "--keep",
                "3",
                "--dry-run",
                "--json",
            )
        )
    )
    assert [s["session_id"] for s in kept["sessions"]] == ["old-2"]
    only_keep = json.loads(
        ok(copilotd(daemon, "sessions", "prune", "--keep", "1", "--dry-run", "--json"))
    )
    assert [s["session_id"] for s in only_keep["sessions"]] == ["recent", "old-1", "old-2"]

    text = ok(copilotd(daemon, "sessions", "prune", "--older-than", "30d"))
    assert text.startswith("deleted 2 session(s)")
    assert listed(daemon) == ["today", "recent", "old-pinned"]
    for session_id in ("old-1", "old-2"):
        assert f"pruned session {session_id}" in daemon.wait_for_output(
            f"pruned session {session_id}"
        )


def test_prune_without_rule_or_policy(daemon: DaemonProcess) -> None:
    line = one_line_error(copilotd(daemon, "sessions", "prune", "--dry-run"))
    assert "no [retention] policy configured" in line


# What `copilotd sessions list` must not load: the server, the store's engine,
# the model providers and their SDKs, metrics. Importing them cost about 0.4 s
# of every client-side subcommand's start (docs/benchmarks.md has the figures).
SERVER_SIDE_PACKAGES = ("lmdb", "openai", "anthropic", "pydantic", "prometheus_client", "httpx2")
SERVER_SIDE_MODULES = (
    "copilotd.runtime.server",
    "copilotd.api",
    "copilotd.store",
    "copilotd.providers",
    "copilotd.sessions.service",
    "copilotd.admin.service",
    # Nor the other subcommands' modules (main loads a subcommand when it runs).
    "copilotd.cli.data",
    "copilotd.cli.service",
)
LIST_AND_REPORT_MODULES = """
import json, sys
from copilotd.cli.main import main
try:
    main(["sessions", "list", "--json"])
finally:
    with open(sys.argv[1], "w") as report:
        json.dump(sorted(sys.modules), report)
"""


async def test_sessions_list_loads_nothing_of_the_server(
    daemon: DaemonProcess, client: CopilotClient, tmp_path: Path
) -> None:
    await client.create_session(session_id="light")
    report = tmp_path / "modules.json"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", LIST_AND_REPORT_MODULES, str(report)],
        capture_output=True,
        text=True,
        env=daemon.env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [s["session_id"] for s in json.loads(result.stdout)] == ["light"]
    loaded = json.loads(report.read_text())
    assert "copilot_client.service" in loaded  # it did talk through the client
    server_side = [
        name
        for name in loaded
        if name.split(".")[0] in SERVER_SIDE_PACKAGES
        or any(name == m or name.startswith(m + ".") for m in SERVER_SIDE_MODULES)
    ]
    assert not server_side
