"""Running the daemon: directories, the single-instance locks, the gRPC server, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import stat
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from copilot_client._paths import MAX_SOCKET_PATH_BYTES, channel_target
from copilot_client.proto.v1 import copilot_pb2, copilot_pb2_grpc
from copilotd import __version__
from copilotd.admin.service import AdminService, DaemonInfo
from copilotd.api.access import start_tcp_server
from copilotd.api.admin_servicer import AdminServicer
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
from copilotd.runtime.metrics import MetricsAddressError
from copilotd.runtime.sidecars import Operations
from copilotd.runtime.systemd import listen_sockets
from copilotd.sessions.service import SessionService
from copilotd.store import Store, StoreError, open_store
from copilotd.store.committer import GroupCommitter

log = logging.getLogger(__name__)

SERVICE_NAME = copilot_pb2.DESCRIPTOR.services_by_name["CopilotService"].full_name
STORE_SUBDIR = "store"
DATA_LOCK_NAME = "copilotd.lock"


def grpc_options(max_prompt_bytes: int) -> tuple[tuple[str, int], ...]:
    """Message size limits: above any valid request, so that ours is the error a
    too-large prompt gets; answers carry stored prompts, so the same for them."""
    limit = max_message_bytes(max_prompt_bytes)
    return (
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
    )


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) or check that an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise StartupError(
            f"{path} belongs to another user (uid {info.st_uid}); choose another location "
            "with --socket / --data-dir"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[IO[str]]:
    """Hold an exclusive lock on ``path`` for as long as the daemon runs.

    The kernel releases it when the process dies, however it dies, so a lock
    file left behind by a killed daemon never blocks the next one.
    """
    # Private like everything of the daemon's; held open for its lifetime.
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise StartupError(
                f"another copilotd (pid {holder}) is already using {what}; stop it first "
                "(systemctl --user stop copilotd, or kill that pid) or choose another "
                "--socket / --data-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield handle
    finally:
        handle.close()


def check_socket_path(socket_path: Path) -> None:
    if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH_BYTES:
        raise StartupError(
            f"socket path {socket_path} is longer than {MAX_SOCKET_PATH_BYTES} bytes, the limit "
            "of Unix sockets; choose a shorter --socket"
        )


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
    ensure_private_dir(config.socket_path.parent)
    ensure_private_dir(config.data_dir)
    with (
        exclusive_lock(config.data_dir / DATA_LOCK_NAME, f"the data directory {config.data_dir}"),
        exclusive_lock(
            config.socket_path.with_name(config.socket_path.name + ".lock"),
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
                max_map_size=config.store.max_size,
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
    committer = GroupCommitter(store)
    committer.start()
    providers = ProviderRegistry(config.providers, offline_delta_delay=config.offline_delay)
    service = SessionService(
        store,
        committer,
        providers,
        version=__version__,
        max_prompt_bytes=config.limits.max_prompt_bytes,
        fanout=operations.fanout(buffer_events=config.limits.subscriber_buffer),
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
            start_time=now_timestamp(),
        ),
        retention=operations.retention,
    )
    try:
        operations.attach(admin, service, store, providers)
    except OSError as error:
        raise StartupError(f"cannot serve metrics on {config.metrics_address}: {error}") from None
    recovered = await service.recover_interrupted_turns()
    if recovered:
        log.warning("closed %d turn(s) interrupted by the previous daemon's end", recovered)
    service.purger.kick()  # deletions the previous daemon did not finish purging

    servicer, health = AdminServicer(service, admin), HealthServicer()

    def register(server: grpc.aio.Server) -> None:
        copilot_pb2_grpc.add_CopilotServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )

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
    server.add_insecure_port(channel_target(bound_path))
    try:
        tcp_server = await start_tcp_server(config.tcp, register, options) if config.tcp else None
    except ConfigError as error:
        await committer.close()
        raise StartupError(str(error)) from None
    await server.start()
    os.chmod(bound_path, 0o600)
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    operations.start(inherited, bound_path)
    log.info(
        "copilotd %s serving on %s (data in %s%s)",
        __version__,
        target,
        config.data_dir,
        ", socket from systemd" if inherited is not None else "",
    )
    operations.ready(f"serving on {target}")
    if on_ready is not None:
        on_ready(target)
    warm_up = asyncio.create_task(providers.warm_up(), name="provider warm-up")
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
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
        bound_path.unlink(missing_ok=True)
        log.info("stopped; store closed cleanly")
