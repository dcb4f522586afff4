"""The session-persistence recipe across processes, with the daemon killed in between."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from tests.support.daemon_process import DaemonProcess
from tests.support.example import check_resumed_output, run_step


def auto_started_pid(data_dir: Path) -> int:
    return int((data_dir / "copilotd.lock").read_text().split()[0])


def test_recipe_survives_sigkill_and_restart(daemon: DaemonProcess) -> None:
    created = run_step("create", daemon.env)
    assert "user-123-conversation" in created
    assert "offline model" in created

    daemon.kill()
    daemon.start()

    check_resumed_output(run_step("resume", daemon.env))
    # The second step deleted the session.
    after = run_step_listing(daemon.env)
    assert "user-123-conversation" not in after


def run_step_listing(env: dict[str, str]) -> str:
    code = (
        "import asyncio\n"
        "from copilot_client import CopilotClient\n"
        "async def main():\n"
        "    async with CopilotClient(auto_start=False) as client:\n"
        "        print([s.session_id for s in await client.list_sessions()])\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_recipe_with_auto_started_daemons(short_tmp: Path) -> None:
    """No daemon at first: the client starts one; after SIGKILL the next client starts another."""
    env = {
        **os.environ,
        "COPILOTD_SOCKET": str(short_tmp / "run" / "copilotd.sock"),
        "COPILOTD_DATA_DIR": str(short_tmp / "data"),
    }
    pids: list[int] = []
    try:
        run_step("create", env)
        pids.append(auto_started_pid(short_tmp / "data"))
        os.kill(pids[0], 9)
        # Wait until the kernel has the daemon gone (its lock is released on exit).
        _wait_gone(pids[0])
        check_resumed_output(run_step("resume", env))
        pids.append(auto_started_pid(short_tmp / "data"))
        assert pids[1] != pids[0]
    finally:
        for pid in pids:
            _kill_quietly(pid)


def _wait_gone(pid: int) -> None:
    # waitpid is not ours to call (the daemon is detached); pidfd polling is event-based.
    fd = os.pidfd_open(pid)
    try:
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(10_000), f"process {pid} did not exit"
    finally:
        os.close(fd)


def _kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
