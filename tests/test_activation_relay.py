"""The socket-activation relay: what an idle connection costs, and that bytes pass intact.

The relay runs in this process between real Unix sockets: a listening socket
(systemd's, in production) and an echo server standing in for the gRPC
server behind it. Memory is counted with ``tracemalloc``, which sees every
buffer the relay allocates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

from copilotd.runtime.activation import SocketRelay

IDLE_CONNECTIONS = 200
# What one idle relayed connection may hold: its two sockets, two tasks and
# their frames (a few KiB), never a read buffer.
MAX_BYTES_PER_IDLE_CONNECTION = 32 * 1024


class EchoServer:
    """Echoes every byte back; counts the connections it has accepted."""

    def __init__(self) -> None:
        self.accepted = 0
        self._changed = asyncio.Condition()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._changed:
            self.accepted += 1
            self._changed.notify_all()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def wait_for(self, accepted: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.accepted >= accepted)


@contextlib.asynccontextmanager
async def relayed(short_tmp: Path) -> AsyncIterator[tuple[Path, EchoServer]]:
    echo = EchoServer()
    target = short_tmp / "target.sock"
    server = await asyncio.start_unix_server(echo.handle, path=str(target))
    public = short_tmp / "public.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(public))
    listener.listen(IDLE_CONNECTIONS)
    listener.setblocking(False)
    relay = SocketRelay(listener, target)
    relay.start()
    try:
        yield public, echo
    finally:
        await relay.close()
        server.close()
        await server.wait_closed()


async def test_idle_connections_hold_no_read_buffers(short_tmp: Path) -> None:
    async with relayed(short_tmp) as (public, echo):
        # Warm up: the first connection creates what every later one shares.
        reader, writer = await asyncio.open_unix_connection(str(public))
        await echo.wait_for(1)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            idle = [
                await asyncio.open_unix_connection(str(public)) for _ in range(IDLE_CONNECTIONS)
            ]
            await echo.wait_for(1 + IDLE_CONNECTIONS)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        per_connection = grown / IDLE_CONNECTIONS
        print(f"\nFIGURES relay: {per_connection / 1024:.1f} KiB per idle connection (traced)")
        assert per_connection < MAX_BYTES_PER_IDLE_CONNECTION

        # The connections still work, and large writes pass intact in both directions.
        payload = os.urandom(3 * 1024 * 1024 + 17)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()

        # Read while writing: the echo's answer must not wait behind the whole payload.
        _, echoed = await asyncio.gather(send(), reader.readexactly(len(payload)))
        assert echoed == payload
        for _, idle_writer in [*idle, (reader, writer)]:
            idle_writer.close()
