"""The CLI and the client call CopilotAdminService, never the session
service's deprecated copies of its methods: the daemon's own per-method
call counts (its Prometheus endpoint) show which service answered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from copilot_client import CopilotClient, CopilotError, SessionNotFoundError
from copilot_client.proto.admin.v1 import admin_pb2
from copilot_client.service import ServiceClient
from tests.support.cli import copilotd, ok
from tests.support.daemon_process import DaemonProcess
from tests.support.metrics import calls_by_method, scrape, start_metered

ADMIN_METHODS = [
    method.name for method in admin_pb2.DESCRIPTOR.services_by_name["CopilotAdminService"].methods
]


@pytest.fixture
def metered(short_tmp: Path) -> Iterator[tuple[DaemonProcess, str]]:
    daemon, url = start_metered(short_tmp)
    yield daemon, url
    daemon.kill()


async def test_every_admin_command_goes_to_the_admin_service(
    metered: tuple[DaemonProcess, str], tmp_path: Path
) -> None:
    daemon, url = metered
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(session_id="a")
        await session.send_and_wait("hello")
        assert (await client.pin_session("a")).pinned

    export = tmp_path / "export.jsonl"
    ok(copilotd(daemon, "sessions", "unpin", "a"))
    ok(copilotd(daemon, "sessions", "pin", "a"))
    assert "would delete 0 session(s)" in ok(
        copilotd(daemon, "sessions", "prune", "--keep", "0", "--dry-run")
    )
    ok(copilotd(daemon, "export", "--all", "-o", str(export)))
    assert "renamed from a" in ok(copilotd(daemon, "import", "--rename", str(export)))
    ok(copilotd(daemon, "backup", str(tmp_path / "backup")))
    assert "is running" in ok(copilotd(daemon, "status"))

    calls = calls_by_method(scrape(url))
    used = {
        name for name in ADMIN_METHODS if calls.get(f"/copilot.admin.v1.CopilotAdminService/{name}")
    }
    deprecated = {name for name in ADMIN_METHODS if calls.get(f"/copilot.v1.CopilotService/{name}")}
    assert (used, deprecated) == (set(ADMIN_METHODS), set())


async def test_the_admin_stub_lives_with_the_channel_and_its_errors_are_mapped(
    daemon: DaemonProcess,
) -> None:
    service = ServiceClient(daemon.socket_path)
    with pytest.raises(CopilotError, match="not started"):
        _ = service.admin_stub
    service.open()
    try:
        request = admin_pb2.SetSessionPinnedRequest(session_id="gone", pinned=True)
        with pytest.raises(SessionNotFoundError, match="gone"):
            await service.call(service.admin_stub.SetSessionPinned, request)
    finally:
        await service.close()
    with pytest.raises(CopilotError, match="not started"):
        _ = service.admin_stub
