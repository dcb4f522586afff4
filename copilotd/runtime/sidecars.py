"""What runs beside the API: systemd notification and watchdog, the activation
relay, retention sweeps and the metrics endpoint, started and stopped in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from copilotd.admin.retention import RetentionPolicy, RetentionRule, Selection
from copilotd.admin.service import AdminService
from copilotd.errors import ServiceError, SessionNotFoundError
from copilotd.events import SessionEvent
from copilotd.providers import ProviderRegistry
from copilotd.runtime.activation import InheritedSocket, SocketRelay
from copilotd.runtime.metrics_address import MetricsAddress
from copilotd.runtime.periodic import Periodic
from copilotd.runtime.systemd import Watchdog, notify, watchdog_interval
from copilotd.search import SearchEngine
from copilotd.sessions.fanout import FanOut
from copilotd.sessions.service import SessionService
from copilotd.store import Store

if TYPE_CHECKING:
    from copilotd.runtime.metrics import Metrics

log = logging.getLogger(__name__)


class Operations:
    """Raises ``MetricsAddressError`` for a metrics address that is not loopback."""

    def __init__(self, *, metrics_address: str | None, retention: RetentionPolicy) -> None:
        self.retention = retention
        self._metrics_address = MetricsAddress.parse(metrics_address) if metrics_address else None
        self.metrics: Metrics | None = None
        if self._metrics_address is not None:
            from copilotd.runtime.metrics import Metrics  # prometheus_client: only with --metrics

            self.metrics = Metrics()
        self._relay: SocketRelay | None = None
        self._sweeper: RetentionSweeper | None = None
        self._watchdog: Watchdog | None = None
        self._admin: AdminService | None = None
        self._leases: LeaseKeeper | None = None

    def fanout(self, indexer: SearchEngine, **options: Any) -> FanOut[SessionEvent]:
        """The fan-out every commit publishes to, which also feeds the search index."""
        fanout: _IndexedFanOut
        if self.metrics:
            from copilotd.runtime.metrics import MeteredFanOut

            class _IndexedMeteredFanOut(_IndexedFanOut, MeteredFanOut):
                pass

            fanout = _IndexedMeteredFanOut(self.metrics, **options)
        else:
            fanout = _IndexedFanOut(**options)
        fanout.indexer = indexer
        return fanout

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

    def start(
        self, inherited: InheritedSocket | None, bound_path: Path, service: SessionService
    ) -> None:
        """Start relaying, sweeping, keeping leases and pinging the watchdog (the API
        already serves)."""
        if service.store.shared:
            self._leases = LeaseKeeper(service)
            self._leases.start()
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
        if self._leases is not None:
            await self._leases.stop()

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
        provider = providers.route_for(record.metadata).provider
    except ServiceError:
        return "unavailable"
    return provider.metrics_label or provider.name


class _IndexedFanOut(FanOut[SessionEvent]):
    """Shows the indexer every published batch and every session the core forgets (the
    core publishes each commit here, and ends a session's subscribers with
    ``SessionNotFoundError`` when it deletes or replaces the session)."""

    indexer: SearchEngine

    def publish(self, key: str, items: Sequence[SessionEvent]) -> None:
        self.indexer.observe(key, items)
        super().publish(key, items)

    def end(self, key: str, error: ServiceError, last: Sequence[SessionEvent] = ()) -> None:
        if isinstance(error, SessionNotFoundError):
            self.indexer.reindex(key)
        super().end(key, error, last)


class LeaseKeeper(Periodic):
    """On a store shared by several daemons, every third of a lease: renew this
    daemon's leases, take over the turns of daemons whose leases expired, and
    deliver what other daemons committed and serve the calls they relayed here,
    should a notification have been missed."""

    def __init__(self, service: SessionService) -> None:
        self._service = service
        super().__init__("lease keeper", service.store.lease_seconds / 3, self._tick)

    async def _tick(self) -> None:
        await asyncio.to_thread(self._service.store.renew_leases)
        self._service.catch_up_all()
        if not self._service.shutting_down:
            await self._service.recover_interrupted_turns()
        await self._service.serve_relayed()


class RetentionSweeper(Periodic):
    """Applies the configured rule at start and then every ``sweep_interval``.

    Args:
        policy: the configured policy (must have a rule).
        prune: deletes what a rule selects and returns the deleted sessions;
            the same path ``PruneSessions`` takes.
    """

    def __init__(
        self,
        policy: RetentionPolicy,
        prune: Callable[[RetentionRule], Awaitable[Selection]],
    ) -> None:
        if policy.rule is None:
            raise ValueError("retention is off: no rule to sweep with")
        self._rule = policy.rule
        self._prune = prune
        super().__init__("retention sweep", policy.sweep_interval.total_seconds(), self._sweep)

    async def _sweep(self) -> None:
        result = await self._prune(self._rule)
        log.info(
            "retention sweep: deleted %d session(s) %s (%d pinned kept)",
            len(result.sessions),
            self._rule.describe(),
            result.pinned_kept,
        )
