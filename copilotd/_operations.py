"""What runs beside the API: systemd notification and watchdog, the activation
relay, retention sweeps and the metrics endpoint, started and stopped in order."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc

from copilotd._activation import InheritedSocket, SocketRelay
from copilotd._admin import AdminService
from copilotd._core import SessionService
from copilotd._errors import ServiceError
from copilotd._events import SessionEvent
from copilotd._fanout import FanOut
from copilotd._metrics import MeteredFanOut, Metrics, MetricsAddress
from copilotd._providers import ProviderRegistry
from copilotd._retention import RetentionPolicy, RetentionSweeper
from copilotd._store import Store
from copilotd._systemd import Watchdog, notify, watchdog_interval

log = logging.getLogger(__name__)


class Operations:
    """Raises ``MetricsAddressError`` for a metrics address that is not loopback."""

    def __init__(self, *, metrics_address: str | None, retention: RetentionPolicy) -> None:
        self.retention = retention
        self._metrics_address = MetricsAddress.parse(metrics_address) if metrics_address else None
        self.metrics = Metrics() if self._metrics_address else None
        self._relay: SocketRelay | None = None
        self._sweeper: RetentionSweeper | None = None
        self._watchdog: Watchdog | None = None
        self._admin: AdminService | None = None

    def fanout(self, **options: Any) -> FanOut[SessionEvent]:
        if self.metrics:
            return MeteredFanOut(self.metrics, **options)
        return FanOut(**options)

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [self.metrics.interceptor()] if self.metrics else []

    def attach(
        self,
        admin: AdminService,
        service: SessionService,
        store: Store,
        providers: ProviderRegistry,
    ) -> None:
        """Know the services; open the metrics endpoint (before the API: a busy port stops it)."""
        self._admin = admin
        if self.metrics is None or self._metrics_address is None:
            return
        self.metrics.watch(
            session_count=store.session_count,
            store_bytes=store.size_bytes,
            running_turns=lambda: service.running_turns,
            idle_context_bytes=lambda: service.idle_contexts.bytes,
            provider_of=lambda session_id: _provider_name(store, providers, session_id),
        )
        address = self.metrics.serve(self._metrics_address)
        admin.info = replace(admin.info, metrics_address=address)

    def start(self, inherited: InheritedSocket | None, bound_path: Path) -> None:
        """Start relaying, sweeping and pinging the watchdog (the API already serves)."""
        if inherited is not None:
            self._relay = SocketRelay(inherited.sock, bound_path)
            self._relay.start()
        if self.retention.rule is not None and self._admin is not None:
            self._sweeper = RetentionSweeper(self.retention, self._admin.prune)
            self._sweeper.start()
            log.info(
                "retention: sweeping every %s for sessions %s",
                self.retention.sweep_interval,
                self.retention.rule.describe(),
            )
        interval = watchdog_interval()
        if interval is not None:
            self._watchdog = Watchdog(interval)
            self._watchdog.start()

    def ready(self, status: str) -> None:
        """Tell systemd the daemon serves (Type=notify): only now do clients get started."""
        notify("READY=1", f"STATUS={status}")

    async def stopping(self) -> None:
        """First step of shutdown: tell systemd, stop taking connections and sweeping."""
        notify("STOPPING=1", "STATUS=shutting down")
        if self._relay is not None:
            await self._relay.stop_accepting()
        if self._sweeper is not None:
            await self._sweeper.stop()

    async def close(self) -> None:
        """Last step, once the server has stopped."""
        if self._relay is not None:
            await self._relay.close()
        if self._watchdog is not None:
            await self._watchdog.stop()
        if self.metrics is not None:
            self.metrics.close()


def _provider_name(store: Store, providers: ProviderRegistry, session_id: str) -> str:
    record = store.get_session(session_id)
    if record is None:
        return "unknown"
    try:
        return providers.route_for(record.metadata).provider.name
    except ServiceError:
        return "unavailable"
