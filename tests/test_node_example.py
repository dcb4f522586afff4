"""The Node.js example (examples/node) against a live daemon: another language, same API."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from copilot_client import CopilotClient
from tests.support.daemon_process import DaemonProcess

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"


def run_example(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; the README test command needs Node.js 18+ and npm")
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("examples/node has no node_modules: run `npm ci` there (.ci/run does)")
    return subprocess.run(
        [node, "client.js", *args],
        cwd=EXAMPLE,
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_node_example_creates_streams_lists_and_deletes(daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        await client.create_session(session_id="python-made")
        version = await client.ping()

        result = run_example(daemon, "from-node", "Bonjour from Node")
        assert result.returncode == 0, result.stderr + result.stdout
        lines = result.stdout.splitlines()
        assert lines[0] == f"connected to copilotd {version}"
        assert lines[1] == "created from-node (model offline)"
        events = [line.split()[2] for line in lines if line.startswith("event ")]
        assert events == [
            "user.message",
            "assistant.turn_start",
            "assistant.message",
            "assistant.turn_end",
            "session.idle",
        ]
        assert re.search(r"^sent message [0-9a-f-]{36}$", result.stdout, re.M)
        deltas = re.search(r"^streamed (\d+) deltas$", result.stdout, re.M)
        assert deltas is not None and int(deltas.group(1)) > 1  # the live tail reached Node
        assert 'You said: "Bonjour from Node"' in result.stdout
        assert "listed 2 session(s); from-node has 2 messages" in lines
        assert "deleted from-node" in lines
        assert lines[-1].startswith(
            "after delete: NOT_FOUND (ERROR_REASON_SESSION_NOT_FOUND): no session with id"
        )

        assert await client.get_session_metadata("from-node") is None
        assert [m.session_id for m in await client.list_sessions()] == ["python-made"]


def test_the_node_example_reports_a_missing_daemon(short_tmp: Path) -> None:
    result = run_example(DaemonProcess(short_tmp), "x")
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAVAILABLE")


def test_the_node_example_runs_its_tool_when_the_model_calls_it(daemon: DaemonProcess) -> None:
    result = run_example(daemon, "node-tools", 'call word_count {"text": "one two three"}')
    assert result.returncode == 0, result.stderr + result.stdout
    events = [line.split()[2] for line in result.stdout.splitlines() if line.startswith("event ")]
    assert events == [
        "user.message",
        "assistant.turn_start",
        "assistant.message",
        "tool.execution_start",
        "external_tool.requested",
        "tool.execution_complete",
        "assistant.message",
        "assistant.turn_end",
        "session.idle",
    ]
    lines = result.stdout.splitlines()
    assert 'tool call word_count {"text": "one two three"}' in lines
    assert "tool result word_count: 3" in lines  # answered by Node, recorded by the daemon
    assert 'answer: word_count returned: "3".' in lines
