"""Running the daemon: directories, the single-instance locks, the gRPC server, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from copilot_client.paths import MAX_SOCKET_PATH_BYTES, channel_target, socket_lock_path
from copilot_client.proto.admin.v1 import admin_pb2, admin_pb2_grpc
from copilot_client.proto.v1 import copilot_pb2, copilot_pb2_grpc
from copilotd import __version__
from copilotd.admin.service import AdminService, DaemonInfo
from copilotd.api.access import start_tcp_server
from copilotd.api.admin_servicer import AdminServicer
from copilotd.api.deprecated import CopilotServicerWithDeprecatedAdmin
from copilotd.api.interceptors import RequestDecoding
from copilotd.config import ConfigError, DaemonConfig
from copilotd.events import now_timestamp
from copilotd.limits import max_message_bytes
from copilotd.providers import ProviderRegistry
from copilotd.redaction import install_log_redaction
from copilotd.runtime.activation import (
    ActivationError,
    InheritedSocket,
    inherited_socket,
    private_socket_path,
)
from copilotd.runtime.datadir import (
    DATA_LOCK_NAME,
    STORE_SUBDIR,
    StartupError,
    ensure_private_dir,
    exclusive_lock,
)
from copilotd.runtime.metrics_address import MetricsAddressError
from copilotd.runtime.reflection import REFLECTION_SERVICE, LazyReflection
from copilotd.runtime.sidecars import Operations
from copilotd.runtime.socket_watch import SocketWatch
from copilotd.runtime.systemd import listen_sockets
from copilotd.search import Indexer, SearchEngine
from copilotd.sessions.service import SessionService
from copilotd.store import Store, StoreChange, StoreError, open_store
from copilotd.store.committer import GroupCommitter
from copilotd.store.settings import describe_store

log = logging.getLogger(__name__)

SERVICE_NAME = copilot_pb2.DESCRIPTOR.services_by_name["CopilotService"].full_name
ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["CopilotAdminService"].full_name


def grpc_options(max_prompt_bytes: int) -> tuple[tuple[str, int], ...]:
    """Message size limits: above any valid request, so that ours is the error a
    too-large prompt gets; answers carry stored prompts, so the same for them."""
    limit = max_message_bytes(max_prompt_bytes)
    return (
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    )


@contextmanager
def private_umask() -> Iterator[None]:
    """Files created inside are private (0600 at most); the process's umask is restored after.

    The umask is the process's: keep the block to one synchronous call.
    """
    previous = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(previous)


def check_socket_path(socket_path: Path) -> None:
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH_BYTES:
        raise StartupError(
            f"socket path {socket_path} is longer than {MAX_SOCKET_PATH_BYTES} bytes, the limit "
            "of Unix sockets; choose a shorter --socket"
        )


def _without_credentials(url: str) -> str:
    """``url`` without user info, query or fragment, where credentials may hide."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def loaded_summary(config: DaemonConfig) -> list[str]:
    """What the daemon loaded, for its start-up log; never a secret."""
    store = f"store: {config.store.backend} in {config.data_dir / STORE_SUBDIR}"
    if config.store.max_size is not None:
        store += f", capped at {config.store.max_size} bytes"
    lines = [f"config: {config.source or 'none (built-in defaults)'}", store]
    providers = config.providers
    for name, connection in providers.connections.items():
        models = [model.name for model in providers.models.values() if model.provider == name]
        if connection.missing_secret:
            secret = f"missing ({connection.missing_secret})"
        else:
            secret = "set" if connection.api_key or connection.bearer_token else "none"
        where = f" at {_without_credentials(connection.base_url)}" if connection.base_url else ""
        lines.append(
            f"provider {name}: {connection.type}{where}, secret {secret}, models: "
            f"{', '.join(models) or 'none listed'}"
        )
    if not providers.connections:
        lines.append("providers: none configured (the offline model answers every model name)")
    elif providers.default_model:
        lines.append(f"default model: {providers.default_model}")
    return lines


async def serve(config: DaemonConfig, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Run the daemon until SIGTERM or SIGINT; raises ``StartupError`` when it cannot start.

    Under systemd socket activation the passed socket is served (and its
    path is the socket, whatever ``config.socket_path`` says).
    """
    try:
        inherited = inherited_socket(listen_sockets())
    except ActivationError as error:
        raise StartupError(str(error)) from None
    if inherited is not None:
        config = replace(config, socket_path=inherited.path)
    install_log_redaction()
    check_socket_path(config.socket_path)
    ensure_private_dir(config.socket_path.parent, follow_symlinks=False)
    ensure_private_dir(config.data_dir)
    with (
        exclusive_lock(config.data_dir / DATA_LOCK_NAME, f"the data directory {config.data_dir}"),
        exclusive_lock(
            socket_lock_path(config.socket_path),
            f"the socket {config.socket_path}",
        ),
    ):
        # Holding the socket's lock, any socket file present is a dead daemon's
        # (unless systemd passed it: that one is systemd's).
        if inherited is None:
            config.socket_path.unlink(missing_ok=True)
        try:
            store = open_store(
                config.store.backend,
                config.data_dir / STORE_SUBDIR,
                # Stable across restarts: a restarted daemon takes its own leases back at once.
                **config.store.backend_options(f"{socket.gethostname()}:{config.data_dir}"),
            )
        except StoreError as error:
            raise StartupError(str(error)) from None
        try:
            await _serve_store(config, store, on_ready, inherited)
        finally:
            store.close()


async def _serve_store(
    config: DaemonConfig,
    store: Store,
    on_ready: Callable[[str], None] | None,
    inherited: InheritedSocket | None,
) -> None:
    try:
        operations = Operations(
            metrics_address=config.metrics_address,
            retention=config.retention,
        )
    except MetricsAddressError as error:
        raise StartupError(str(error)) from None
    try:
        indexer = _search_engine(store, config.data_dir)
    except (OSError, sqlite3.Error, RuntimeError) as error:
        raise StartupError(f"cannot open the search index in {config.data_dir}: {error}") from None
    try:
        await _serve_indexed(config, store, indexer, operations, on_ready, inherited)
    finally:
        await indexer.close()


def _search_engine(store: Store, data_dir: Path) -> SearchEngine:
    """The database's own full-text search on PostgreSQL (written with the events, seen
    by every daemon at once); a SQLite index in the data directory otherwise."""
    if store.shared:
        from copilotd.search.postgres import PostgresSearch  # psycopg: only on that store
        from copilotd.store.postgres_store import PostgresStore

        if isinstance(store, PostgresStore):
            return PostgresSearch(store)
    return Indexer(store, data_dir)


async def _serve_indexed(
    config: DaemonConfig,
    store: Store,
    indexer: SearchEngine,
    operations: Operations,
    on_ready: Callable[[str], None] | None,
    inherited: InheritedSocket | None,
) -> None:
    committer = GroupCommitter(store)
    committer.start()
    providers = ProviderRegistry(config.providers, offline_delta_delay=config.offline_delay)
    service = SessionService(
        store,
        committer,
        providers,
        version=__version__,
        max_prompt_bytes=config.limits.max_prompt_bytes,
        fanout=operations.fanout(indexer, buffer_events=config.limits.subscriber_buffer),
        max_tool_rounds=config.tools.max_rounds,
        tool_call_timeout=(
            config.tools.pending_timeout.total_seconds() if config.tools.pending_timeout else None
        ),
    )
    admin = AdminService(
        service,
        store,
        committer,
        info=DaemonInfo(
            version=__version__,
            socket_path=config.socket_path,
            data_dir=config.data_dir,
            socket_activated=inherited is not None,
            config_file=config.source,
            store_backend=config.store.backend,
            start_time=now_timestamp(),
            store_location=describe_store(config.store, config.data_dir / STORE_SUBDIR),
        ),
        retention=operations.retention,
    )
    try:
        operations.attach(admin, service, store, providers)
    except OSError as error:
        raise StartupError(f"cannot serve metrics on {config.metrics_address}: {error}") from None
    loop = asyncio.get_running_loop()

    # Before recovery, so that nothing committed by other daemons after it is missed.
    def on_change(change: StoreChange | None) -> None:  # in the store's thread
        loop.call_soon_threadsafe(service.on_store_change, change)
        loop.call_soon_threadsafe(indexer.changed, change)

    store.watch(on_change)
    recovered = await service.recover_interrupted_turns()
    if recovered:
        log.warning("closed %d turn(s) interrupted by the previous daemon's end", recovered)

    admin_servicer, health = AdminServicer(admin, indexer), HealthServicer()
    servicer = CopilotServicerWithDeprecatedAdmin(service, indexer, admin_servicer)

    def register(server: grpc.aio.Server) -> None:
        copilot_pb2_grpc.add_CopilotServiceServicer_to_server(servicer, server)
        admin_pb2_grpc.add_CopilotAdminServiceServicer_to_server(admin_servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        names = (SERVICE_NAME, ADMIN_SERVICE_NAME, health_name, REFLECTION_SERVICE)
        server.add_generic_rpc_handlers((LazyReflection(names),))

    options = grpc_options(config.limits.max_prompt_bytes)
    server = grpc.aio.server(
        interceptors=[RequestDecoding(), *operations.interceptors()], options=options
    )
    register(server)
    # Behind systemd's socket, the server listens privately and a relay joins them.
    bound_path = (
        config.socket_path if inherited is None else private_socket_path(config.socket_path)
    )
    check_socket_path(bound_path)
    bound_path.unlink(missing_ok=True)
    target = channel_target(config.socket_path)
    # grpc binds (and listens) here, with the umask's mode: a private umask
    # makes the socket 0600 from its first moment, so a client that connects
    # as soon as it appears (an auto-starting one) finds it private.
    with private_umask():
        server.add_insecure_port(channel_target(bound_path))
    try:
        tcp_server = await start_tcp_server(config.tcp, register, options) if config.tcp else None
    except ConfigError as error:
        await committer.close()
        raise StartupError(str(error)) from None
    await server.start()
    for name in ("", SERVICE_NAME, ADMIN_SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    operations.start(inherited, bound_path, service)
    socket_watch = SocketWatch({config.socket_path, bound_path}, stop.set)
    socket_watch.start()
    log.info(
        "copilotd %s serving on %s (data in %s%s)",
        __version__,
        target,
        config.data_dir,
        ", socket from systemd" if inherited is not None else "",
    )
    for line in loaded_summary(config):
        log.info("%s", line)
    # Background work starts once the socket listens: a client waiting on an
    # auto-start needs none of it for its first answer (tests/test_import_budget.py).
    indexer.start()  # catches up with the log; searches wait for it
    service.purger.kick()  # deletions the previous daemon did not finish purging
    operations.ready(f"serving on {target}")
    if on_ready is not None:
        on_ready(target)
    warm_up = asyncio.create_task(providers.warm_up(), name="provider warm-up")
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await socket_watch.stop()
        await operations.stopping()
        await health.enter_graceful_shutdown()
        warm_up.cancel()
        await service.shutdown()
        await server.stop(config.shutdown_grace)
        if tcp_server is not None:
            await tcp_server.stop(config.shutdown_grace)
        await operations.close()
        await committer.close()
        await providers.aclose()
        # Not if it was replaced: the new file may be another daemon's socket.
        if socket_watch.still_ours(bound_path):
            bound_path.unlink()
        log.info("stopped; store closed cleanly")
