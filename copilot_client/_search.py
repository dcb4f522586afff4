"""The cross-session search call."""

from __future__ import annotations

from datetime import datetime

from ._types import SearchHit, SearchPage
from .proto.v1 import copilot_pb2
from .service import ServiceClient, UseCallTimeout

__all__ = ["search_sessions"]


async def search_sessions(
    transport: ServiceClient,
    query: str,
    page_size: int,
    page_token: str | None,
    *,
    session_id_prefix: str | None,
    since: datetime | None,
    until: datetime | None,
    include_rewound: bool,
    deadline: float | UseCallTimeout | None,
) -> SearchPage:
    request = copilot_pb2.SearchSessionsRequest(
        query=query,
        page_size=page_size,
        page_token=page_token or "",
        session_id_prefix=session_id_prefix or "",
        include_rewound=include_rewound,
    )
    if since is not None:
        request.since.FromDatetime(since)
    if until is not None:
        request.until.FromDatetime(until)
    response = await transport.call(transport.stub.SearchSessions, request, deadline=deadline)
    return SearchPage(
        hits=[SearchHit.from_proto(hit) for hit in response.hits],
        next_page_token=response.next_page_token or None,
    )
