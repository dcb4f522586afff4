"""Every client call has a deadline: a frozen daemon (SIGSTOP) never hangs a caller.

The daemon is a real process, stopped with SIGSTOP after the client has
connected: its socket still accepts connections and the kernel queues the
calls, but nothing answers. Each test resumes it (SIGCONT) before it is killed.
pytest-timeout is the only bound on how long a test may take: the assertions
are about which error a call raises, never about how long it took.
"""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from copilot_client import (
    CopilotClient,
    CopilotSession,
    DaemonTimeoutError,
    DaemonUnavailableError,
)
from tests.support.cli import copilotd
from tests.support.daemon_process import DaemonProcess

# Short enough to keep the tests quick; the error is the same for any value.
SHORT = 0.5

pytestmark = pytest.mark.timeout(120)


@contextmanager
def frozen(daemon: DaemonProcess) -> Iterator[int]:
    """The daemon stopped (as by ``kill -STOP``) inside the block; its pid."""
    assert daemon.process is not None
    pid = daemon.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGCONT)


def every_call(client: CopilotClient, session: CopilotSession) -> dict[str, Callable[..., Any]]:
    """Each call a program makes, by name; each takes ``timeout=``."""
    return {
        "ping": client.ping,
        "list_sessions": client.list_sessions,
        "list_sessions_page": client.list_sessions_page,
        "get_session_metadata": lambda **kw: client.get_session_metadata("frozen", **kw),
        "create_session": lambda **kw: client.create_session(session_id="another", **kw),
        "resume_session": lambda **kw: client.resume_session("frozen", **kw),
        "delete_session": lambda **kw: client.delete_session("frozen", **kw),
        "list_models": client.list_models,
        "client.get_messages": lambda **kw: client.get_messages("frozen", **kw),
        "send": lambda **kw: session.send("hello?", **kw),
        "get_messages": session.get_messages,
        "abort": session.abort,
        "set_model": lambda **kw: session.set_model("offline", **kw),
    }


async def raises_timeout(call: Callable[..., Awaitable[Any]], **kwargs: Any) -> DaemonTimeoutError:
    with pytest.raises(DaemonTimeoutError) as raised:
        await call(**kwargs)
    return raised.value


async def test_every_call_on_a_frozen_daemon_times_out_with_the_clients_timeout(
    daemon: DaemonProcess,
) -> None:
    async with CopilotClient(
        socket_path=daemon.socket_path, auto_start=False, timeout=SHORT
    ) as client:
        session = await client.create_session(session_id="frozen")
        with frozen(daemon):
            for name, call in every_call(client, session).items():
                error = await raises_timeout(call)
                # Both what it is and what it is like: a timeout, of the daemon.
                assert isinstance(error, TimeoutError), name
                assert isinstance(error, DaemonUnavailableError), name
                assert f"did not answer within {SHORT:g} s" in error.message, name
                assert str(daemon.socket_path) in error.message, name
        # Thawed, the same client goes on.
        assert await session.send_and_wait("after the thaw") is not None


async def test_a_calls_own_timeout_overrides_the_clients(daemon: DaemonProcess) -> None:
    async with CopilotClient(
        socket_path=daemon.socket_path, auto_start=False, timeout=None
    ) as client:
        session = await client.create_session(session_id="frozen")
        with frozen(daemon):
            for name, call in every_call(client, session).items():
                error = await raises_timeout(call, timeout=SHORT)
                assert f"within {SHORT:g} s" in error.message, name
    async with CopilotClient(
        socket_path=daemon.socket_path, auto_start=False, timeout=SHORT
    ) as client:
        # math.inf lifts the limit for one call: it is then waited for past SHORT.
        assert await client.list_models(timeout=math.inf)


async def test_starting_against_a_frozen_daemon_times_out(daemon: DaemonProcess) -> None:
    with frozen(daemon):
        client = CopilotClient(socket_path=daemon.socket_path, auto_start=True, timeout=SHORT)
        with pytest.raises(DaemonTimeoutError):
            await client.start()
    assert not (client.data_dir / "copilotd.log").exists()  # no second daemon was launched


def test_status_of_a_frozen_daemon_says_it_is_not_answering(daemon: DaemonProcess) -> None:
    with frozen(daemon) as pid:
        text = copilotd(daemon, "--timeout", str(SHORT), "status")
        report = copilotd(daemon, "--timeout", str(SHORT), "status", "--json")
        listing = copilotd(daemon, "--timeout", str(SHORT), "sessions", "list")
    assert text.returncode == 4, text.stderr
    assert f"copilotd (pid {pid}) is not answering at {daemon.socket_path}" in text.stdout
    assert "not running" not in text.stdout
    assert f"kill -CONT {pid}" in text.stdout
    assert report.returncode == 4
    assert json.loads(report.stdout) == {
        "running": True,
        "answering": False,
        "pid": pid,
        "socket": str(daemon.socket_path),
    }
    assert listing.returncode == 1
    assert f"did not answer within {SHORT:g} s" in listing.stderr
    assert "copilotd status" in listing.stderr
