"""Serving on a socket systemd passed (socket activation), through a relay.

grpcio's Python server can only bind addresses itself: it has no API to
adopt an already listening descriptor (gRPC core can, but only when built
with libsystemd, which the published wheels are not). So when systemd hands
over the public socket, the gRPC server listens on a private socket next to
it (same private folder, mode 0600) and ``SocketRelay`` accepts connections
on the public one and copies bytes both ways. The public socket stays
systemd's: the daemon never unlinks it, and after the daemon exits systemd
starts it again on the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

# The most one read takes from a socket. Reads allocate what arrived and let
# it go once sent, so an idle connection holds no buffer at all (a buffer
# kept per direction cost every idle connection 512 KiB), and a busy one at
# most this much per direction.
RELAY_CHUNK_BYTES: Final = 64 * 1024
PRIVATE_SUFFIX: Final = ".grpc"


class ActivationError(Exception):
    """The passed sockets are not what copilotd can serve on; the message says why."""


@dataclass(frozen=True)
class InheritedSocket:
    sock: socket.socket
    path: Path


def inherited_socket(sockets: list[socket.socket]) -> InheritedSocket | None:
    """The one listening Unix stream socket systemd passed, or None when none was passed."""
    if not sockets:
        return None
    if len(sockets) != 1:
        raise ActivationError(
            f"systemd passed {len(sockets)} sockets; copilotd serves exactly one "
            "(one ListenStream= in copilotd.socket)"
        )
    (sock,) = sockets
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        raise ActivationError(
            "the socket systemd passed is not a listening Unix stream socket; "
            "use ListenStream=%t/copilotd/copilotd.sock in copilotd.socket"
        )
    name = sock.getsockname()
    if not isinstance(name, str) or not name or name.startswith("\0"):
        raise ActivationError(
            "the socket systemd passed has no path (abstract or unnamed); give "
            "ListenStream= a file path such as %t/copilotd/copilotd.sock"
        )
    sock.setblocking(False)
    return InheritedSocket(sock, Path(name))


def private_socket_path(public: Path) -> Path:
    """Where the gRPC server listens behind the relay."""
    return public.with_name(public.name + PRIVATE_SUFFIX)


class SocketRelay:
    """Accepts on ``listener`` and joins each connection to the server at ``target``."""

    def __init__(self, listener: socket.socket, target: Path) -> None:
        self._listener = listener
        self._target = str(target)
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._accepting = loop.create_task(self._accept_forever(), name="relay-accept")

    async def stop_accepting(self) -> None:
        """Leave new connections queued on the socket (systemd's, to hand to the next daemon)."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None

    async def close(self) -> None:
        """Stop accepting and cut the relayed connections (after the server said goodbye)."""
        await self.stop_accepting()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        self._listener.close()

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, _ = await loop.sock_accept(self._listener)
            except OSError as error:  # e.g. EMFILE: keep serving what is connected
                log.warning("relay: accept failed: %s", error)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._relay(client), name="relay-connection")
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _relay(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        upstream.setblocking(False)
        client.setblocking(False)
        try:
            await loop.sock_connect(upstream, self._target)
            # Each direction ends on its own (half close); a failure ends both.
            async with asyncio.TaskGroup() as group:
                group.create_task(_pump(client, upstream))
                group.create_task(_pump(upstream, client))
        except* OSError as errors:
            log.debug("relay: connection ended: %s", errors.exceptions[0])
        finally:
            client.close()
            upstream.close()


async def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then pass the end on (a half close)."""
    loop = asyncio.get_running_loop()
    try:
        while received := await loop.sock_recv(source, RELAY_CHUNK_BYTES):
            await loop.sock_sendall(sink, received)
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
