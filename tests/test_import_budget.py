"""What ``copilotd serve`` imports: only what its config uses.

A client that auto-starts the daemon waits for all of the daemon's imports,
so packages that only some configurations need are imported when used:
prometheus_client with ``--metrics``, pydantic with ``[providers]`` or
``[models]`` tables, a provider's SDK when a provider of its type is
configured or a session brings one, psycopg with the PostgreSQL store.
Each was a tenth of a second or more of every start (docs/benchmarks.md).

The daemon runs under ``python -X importtime``, which writes every module it
imports to stderr; that record, not the daemon's own say, is checked.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import copilot_client
import copilotd
from copilot_client import CopilotClient, CopilotError
from copilotd.search import INDEX_FILE_NAME
from tests.support.daemon_process import READY_MARKER, DaemonProcess

# Imported only when the config asks for what they serve.
ON_DEMAND_PACKAGES = (
    "prometheus_client",
    "pydantic",
    "openai",
    "anthropic",
    "httpx2",
    "psycopg",
    "importlib.metadata",
)
# The client side of the code: the CLI's other subcommands and the client
# proper (copilotd uses only copilot_client's paths, wire and stubs).
CLIENT_SIDE_MODULES = (
    "copilotd.cli.data",
    "copilotd.cli.service",
    "copilotd.cli.sessions",
    "copilot_client._client",
    "copilot_client._session",
    "copilot_client._autostart",
    "copilot_client.service",
)
# Imported on their service's first call (copilotd/runtime/reflection.py); the
# top-level grpc_reflection package, which `import grpc` loads, is nearly empty.
ON_FIRST_CALL_PACKAGES = ("grpc_reflection.v1alpha",)
_IMPORT_LINE = re.compile(r"^import time:\s+\d+\s+\|\s+\d+\s+\|\s+(\S+)\s*$")


class ImportRecordingDaemon(DaemonProcess):
    """``copilotd serve`` under ``python -X importtime``."""

    def command(self) -> list[str]:
        python, *rest = super().command()
        return [python, "-X", "importtime", *rest]

    def imported(self) -> set[str]:
        """Every module imported so far, from the importtime lines in the output."""
        return {match[1] for line in self.output if (match := _IMPORT_LINE.match(line))}


def loaded(modules: set[str], package: str) -> bool:
    return any(name == package or name.startswith(package + ".") for name in modules)


@pytest.fixture
def recorded(short_tmp: Path) -> Iterator[ImportRecordingDaemon]:
    process = ImportRecordingDaemon(short_tmp)
    yield process
    process.kill()


async def first_answer(daemon: DaemonProcess) -> None:
    """A session and a turn with the offline model: the path an auto-started client takes."""
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(session_id="budget")
        await session.send_and_wait("hello", timeout=30)


async def test_serve_without_config_imports_no_on_demand_package(
    recorded: ImportRecordingDaemon,
) -> None:
    recorded.start()
    await first_answer(recorded)
    assert recorded.terminate() == 0
    modules = recorded.imported()
    # The record is read right: the server's own packages are in it.
    assert {"grpc", "lmdb", "copilotd.runtime.server"} <= modules
    assert [p for p in ON_DEMAND_PACKAGES if loaded(modules, p)] == []
    assert [m for m in CLIENT_SIDE_MODULES if loaded(modules, m)] == []
    assert [p for p in ON_FIRST_CALL_PACKAGES if loaded(modules, p)] == []


async def test_serve_loads_each_package_when_its_config_asks(
    recorded: ImportRecordingDaemon,
) -> None:
    config_dir = recorded.config_home / "copilotd"
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(
        '[providers.local]\ntype = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'models = ["m"]\nmax_retries = 0\n'
    )
    recorded.extra_args += ["--metrics", "127.0.0.1:0"]
    recorded.start()
    # Nothing listens on port 9: the turn fails, after the SDK was built for it.
    with pytest.raises(CopilotError, match="provider"):
        await first_answer(recorded)
    assert recorded.terminate() == 0
    modules = recorded.imported()
    assert [p for p in ("pydantic", "prometheus_client", "openai") if not loaded(modules, p)] == []
    assert not loaded(modules, "anthropic")


def test_version_is_the_installed_distributions() -> None:
    # copilotd's version is a literal (importlib.metadata is slow to import):
    # it must still say what was installed.
    installed = importlib.metadata.version("copilotd")
    assert copilotd.__version__ == installed == copilot_client.__version__
    assert "copilotd" in sys.modules


async def test_background_work_starts_after_the_socket_listens(short_tmp: Path) -> None:
    # The search index's catch-up with the log (here: the whole log, the index
    # having been deleted) is background work: an auto-starting client waits
    # for the socket, so the daemon listens first and catches up after.
    daemon = DaemonProcess(short_tmp)
    daemon.start()
    try:
        await first_answer(daemon)
        assert daemon.terminate() == 0
        (daemon.data_dir / INDEX_FILE_NAME).unlink()
        restarted = len(daemon.output)
        daemon.start()
        caught_up = daemon.wait_for_output("search index: caught up 1 session(s)")
        lines = daemon.output[restarted:]
        serving = next(n for n, line in enumerate(lines) if READY_MARKER in line)
        assert serving < lines.index(caught_up)
    finally:
        daemon.kill()
