"""The store's errors as the service's: the one place the session core maps them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from copilotd.errors import (
    MessageIdTakenError,
    SequenceConflictError,
    SequenceOutOfRangeError,
    SequenceRewoundError,
    SessionExistsError,
    SessionNotFoundError,
    StoreFullError,
    TurnBusyError,
    TurnTakenOverError,
)
from copilotd.store import (
    EventIdTaken,
    SequenceConflict,
    SequenceUnavailable,
    SessionExists,
    SessionNotFound,
    StoreFull,
    TurnBusy,
    TurnLost,
)


@contextlib.contextmanager
def store_errors(session_id: str = "") -> Iterator[None]:
    """Turn the store's errors into the service's, in one place."""
    try:
        yield
    except SessionNotFound as error:
        raise SessionNotFoundError(error.session_id) from None
    except SessionExists as error:
        raise SessionExistsError(error.session_id) from None
    except SequenceConflict as error:
        raise SequenceConflictError(error.session_id, error.expected, error.actual) from None
    except EventIdTaken as error:
        raise MessageIdTakenError(error.session_id, error.event_id) from None
    except TurnBusy as error:
        raise TurnBusyError(str(error)) from None
    except TurnLost as error:
        raise TurnTakenOverError(error.session_id, error.turn_id) from None
    except SequenceUnavailable as error:
        if error.why == "rewound":
            raise SequenceRewoundError(error.session_id, error.sequence) from None
        raise SequenceOutOfRangeError(
            f"sequence {error.sequence} is not an event of session {error.session_id!r}"
        ) from None
    except StoreFull as error:
        raise StoreFullError(f"the session store is full: {error}") from None
