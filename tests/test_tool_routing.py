"""The daemon's choice of the one client that answers each call (sessions/tool_routing.py),
in-process on real turns and clients: who is chosen, and what a re-attach changes.

The end-to-end behaviour (real processes killed mid-call) is in
tests/test_tools_clients.py and tests/test_tool_permissions_clients.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from copilot_client.proto.v1 import copilot_pb2, events_pb2
from copilotd.errors import InvalidArgumentError
from copilotd.events import SessionEvent
from copilotd.providers import ToolCall
from copilotd.sessions.state import RunningTurn
from copilotd.sessions.tool_routing import ToolClient, ToolRoutes, offer

WEATHER = events_pb2.ToolDefinition(name="get_weather", skip_permission=True)


class Inbox:
    """What the daemon sent one client's stream."""

    def __init__(self) -> None:
        self.events: list[SessionEvent] = []

    def __call__(self, events: Sequence[SessionEvent]) -> None:
        self.events.extend(events)

    def call_ids(self) -> list[str]:
        return [event.external_tool_assigned.tool_call_id for event in self.events]


def holder(client_id: str, *running: str) -> tuple[ToolClient, Inbox]:
    proto = copilot_pb2.ToolClient(client_id=client_id, tools=[WEATHER], running_calls=running)
    client = ToolClient.from_proto("s", proto)
    inbox = Inbox()
    client.deliver = inbox
    return client, inbox


def waiting_turn(*call_ids: str) -> RunningTurn:
    turn = RunningTurn(session_id="s", turn_id="t", user_message_id="m")
    for call_id in call_ids:
        turn.open_calls[call_id] = ToolCall(call_id, "get_weather", "{}")
    return turn


def test_a_client_re_attaching_keeps_the_call_it_is_running() -> None:
    routes, turn = ToolRoutes(), waiting_turn("c1", "c2")
    early, early_inbox = holder("early")
    runner, runner_inbox = holder("runner", "c2")  # re-attached after a restart, running c2
    routes.attach("s", early)
    routes.attach("s", runner)
    routes.route(turn)
    assert (early_inbox.call_ids(), runner_inbox.call_ids()) == (["c1"], ["c2"])


def test_a_stream_replaced_by_its_client_s_new_one_does_not_give_its_calls_away() -> None:
    routes, turn = ToolRoutes(), waiting_turn("c1")
    old, _ = holder("same")
    routes.attach("s", old)
    routes.route(turn)
    new, new_inbox = holder("same")
    routes.attach("s", new)
    other, other_inbox = holder("other")
    routes.attach("s", other)
    assert not routes.detach("s", old)  # the old stream ending later changes nothing
    routes.route(turn)
    assert (turn.assigned, new_inbox.call_ids(), other_inbox.call_ids()) == (
        {("c1", False): "same"},
        [],
        [],
    )
    assert routes.detach("s", new)
    routes.route(turn)
    assert other_inbox.call_ids() == ["c1"]


def test_a_call_answered_is_sent_to_nobody_when_its_client_goes() -> None:
    routes, turn = ToolRoutes(), waiting_turn("c1")
    first, _ = holder("first")
    second, second_inbox = holder("second")
    routes.attach("s", first)
    routes.attach("s", second)
    routes.route(turn)
    del turn.open_calls["c1"]  # answered
    routes.detach("s", first)
    routes.route(turn)
    assert (second_inbox.events, turn.assigned) == ([], {})


def test_a_tool_client_without_an_id_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="client_id is empty"):
        ToolClient.from_proto("s", copilot_pb2.ToolClient(tools=[WEATHER]))
    bad_tool = events_pb2.ToolDefinition(name="no spaces")
    with pytest.raises(InvalidArgumentError, match=r"tool_client.tools\[0\].name"):
        ToolClient.from_proto("s", copilot_pb2.ToolClient(client_id="c", tools=[bad_tool]))


def test_the_model_is_offered_what_the_attached_clients_hold_now() -> None:
    routes, turn = ToolRoutes(), waiting_turn()
    by_hand = events_pb2.ToolDefinition(name="get_time")
    held = events_pb2.ToolDefinition(name="get_weather", has_handler=True, is_terminal=True)
    turn.declared = [by_hand, held]
    client, _ = holder("c")
    routes.attach("s", client)
    offer(turn, routes.clients("s"))
    assert ([tool.name for tool in turn.tools], turn.skip_permission) == (
        ["get_time", "get_weather"],
        frozenset({"get_weather"}),  # the attached client's definition
    )
    routes.detach("s", client)
    offer(turn, routes.clients("s"))
    assert [tool.name for tool in turn.tools] == ["get_time"]
    # A call of it waiting since before the client went still ends the turn.
    assert turn.terminal == frozenset({"get_weather"})
