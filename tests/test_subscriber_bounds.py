"""What subscribers that never read may pin: bounded per subscriber, in total, and in number.

The fan-out is exercised directly (its bounds are parameters there), and a
real daemon shows what a stream that never reads costs it: at most one
stream batch (256 KiB), not a 2 MiB page of history.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from copilot_client import CopilotClient
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilot_client.proto.v1 import copilot_pb2_grpc
from copilotd import events as ev
from copilotd.errors import SubscriberTooSlowError
from copilotd.events import SessionEvent
from copilotd.sessions.fanout import FanOut
from tests.support.daemon_process import DaemonProcess

KiB = 1024


def message(size: int) -> SessionEvent:
    return ev.make_event(ev.USER_MESSAGE, content="m" * size)


async def test_a_subscriber_over_its_byte_bound_is_cut_off_and_the_others_go_on() -> None:
    fanout: FanOut[SessionEvent] = FanOut(buffer_bytes=100 * KiB, total_bytes=10_000 * KiB)
    stalled, reading = fanout.subscribe("s"), fanout.subscribe("s")
    for _ in range(3):
        fanout.publish("s", [message(40 * KiB)])
        assert len(await reading.next_batch()) == 1
    with pytest.raises(SubscriberTooSlowError, match="fell more than 102400 bytes behind"):
        await stalled.next_batch()
    assert fanout.subscriber_count("s") == 1
    fanout.unsubscribe(reading)
    assert fanout.pinned_bytes() == 0


async def test_over_the_total_the_subscriber_pinning_most_is_cut_off() -> None:
    fanout: FanOut[SessionEvent] = FanOut(buffer_bytes=1000 * KiB, total_bytes=150 * KiB)
    # One holds a page of history it could not send (its client stopped reading).
    holding = fanout.subscribe("a")
    holding.hold(120 * KiB)
    behind, reading = fanout.subscribe("b"), fanout.subscribe("b")
    fanout.publish("b", [message(20 * KiB)])  # 160 KiB pinned in all
    with pytest.raises(SubscriberTooSlowError, match="pinned the most memory"):
        await holding.next_batch()
    assert fanout.pinned_bytes() <= 150 * KiB
    assert len(await reading.next_batch()) == 1
    assert len(await behind.next_batch()) == 1
    for subscription in (holding, behind, reading):
        fanout.unsubscribe(subscription)
    assert fanout.pinned_bytes() == 0


async def test_a_taken_batch_counts_until_the_next_is_asked_for() -> None:
    fanout: FanOut[SessionEvent] = FanOut()
    subscription = fanout.subscribe("s")
    first, second = message(30 * KiB), message(50 * KiB)
    fanout.publish("s", [first])
    await subscription.next_batch()
    assert fanout.pinned_bytes() == first.ByteSize()  # still being sent
    fanout.publish("s", [second])
    assert fanout.pinned_bytes() == first.ByteSize() + second.ByteSize()
    await subscription.next_batch()
    assert fanout.pinned_bytes() == second.ByteSize()
    fanout.unsubscribe(subscription)
    assert fanout.pinned_bytes() == 0


async def test_a_subscriber_past_the_limit_cuts_off_the_one_pinning_most() -> None:
    fanout: FanOut[SessionEvent] = FanOut(max_subscribers=3)
    first, heavy, third = (fanout.subscribe(key) for key in ("x", "y", "z"))
    heavy.hold(10 * KiB)
    fanout.subscribe("w")
    with pytest.raises(SubscriberTooSlowError):
        await heavy.next_batch()
    assert fanout.total_subscribers() == 3
    fanout.subscribe("v")  # none pins anything: the oldest goes
    with pytest.raises(SubscriberTooSlowError):
        await first.next_batch()
    assert fanout.subscriber_count("z") == 1 and third is not None


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KiB
    raise AssertionError("no VmRSS")


STREAMS = 60
HISTORY_MESSAGES = 4
# One stream batch (256 KiB) and its bookkeeping; a 2 MiB page of history was
# what a stream that never reads pinned before.
MAX_BYTES_PER_STREAM = 1024 * KiB


async def test_streams_that_never_read_pin_one_batch_each(daemon: DaemonProcess) -> None:
    async with CopilotClient(socket_path=daemon.socket_path, auto_start=False) as client:
        session = await client.create_session(session_id="large")
        for index in range(HISTORY_MESSAGES):
            await session.send_and_wait(f"{index} " + "h" * (500 * KiB))
    assert daemon.process is not None
    async with grpc.aio.insecure_channel(f"unix:{daemon.socket_path}") as channel:
        stub = copilot_pb2_grpc.CopilotServiceStub(channel)
        # Warm up: the first stream loads what every later one shares.
        warm = stub.StreamEvents(pb.StreamEventsRequest(session_id="large"))
        await warm.initial_metadata()
        before = resident_bytes(daemon.process.pid)
        streams = [
            stub.StreamEvents(pb.StreamEventsRequest(session_id="large")) for _ in range(STREAMS)
        ]
        # The headers go out with a stream's first batch: then it pins what it will.
        await asyncio.gather(*(stream.initial_metadata() for stream in streams))
        grown = resident_bytes(daemon.process.pid) - before
        print(f"\nFIGURES {STREAMS} streams that never read: {grown / STREAMS / KiB:.0f} KiB each")
        assert grown / STREAMS < MAX_BYTES_PER_STREAM
        for stream in [warm, *streams]:
            stream.cancel()
