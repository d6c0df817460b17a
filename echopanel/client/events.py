"""Session events: what a :class:`~echopanel.client.Session` tells its listeners."""

from __future__ import annotations

from typing import TypeAlias

import attrs

from echopanel.errors import ErrorCode
from echopanel.protocol.messages import (
    AnalysisUpdate,
    AsrFinal,
    AsrPartial,
    ErrorMessage,
    FinalSummary,
    MetricsMessage,
    ServerMessage,
    StatusMessage,
)

__all__ = [
    "AnalysisEvent",
    "ErrorEvent",
    "FinalEvent",
    "MetricsEvent",
    "PartialEvent",
    "SessionEvent",
    "StateChanged",
    "StatusEvent",
    "SummaryEvent",
    "event_for_message",
]


@attrs.frozen(kw_only=True)
class StateChanged:
    """The session's state changed (``idle``, ``starting``, ``listening``, ``reconnecting``,
    ``finalizing``, ``error``). Within ``starting``, ``step`` names the step
    (``permissions``, ``capture``, ``connecting``, ``awaiting_ack``) and an event is sent for
    each step."""

    state: str
    previous: str
    step: str | None = None


@attrs.frozen(kw_only=True)
class PartialEvent:
    """The whole not-yet-final text of a source's utterance (replaces the previous one)."""

    message: AsrPartial


@attrs.frozen(kw_only=True)
class FinalEvent:
    """An immutable final segment."""

    message: AsrFinal


@attrs.frozen(kw_only=True)
class StatusEvent:
    """A backend status (load states, warnings, dropped messages)."""

    message: StatusMessage


@attrs.frozen(kw_only=True)
class MetricsEvent:
    """About 1 Hz per source: backlog, drops, real-time factor."""

    message: MetricsMessage


@attrs.frozen(kw_only=True)
class AnalysisEvent:
    """Keywords/topics of the recent transcript."""

    message: AnalysisUpdate


@attrs.frozen(kw_only=True)
class ErrorEvent:
    """The attempt failed with ``code``; ``message`` is for people."""

    code: ErrorCode
    message: str


@attrs.frozen(kw_only=True)
class SummaryEvent:
    """The final summary, once the session stopped gracefully."""

    summary: FinalSummary


SessionEvent: TypeAlias = (
    StateChanged
    | PartialEvent
    | FinalEvent
    | StatusEvent
    | MetricsEvent
    | AnalysisEvent
    | ErrorEvent
    | SummaryEvent
)


def event_for_message(message: ServerMessage) -> SessionEvent | None:
    """The session event a server data message becomes (``None`` for none).

    A non-fatal ``error`` (``invalid_message``: the server dropped one message) becomes a
    ``warning`` status; fatal errors are reported as :class:`ErrorEvent` by the session.
    """
    match message:
        case AsrPartial():
            return PartialEvent(message=message)
        case AsrFinal():
            return FinalEvent(message=message)
        case StatusMessage():
            return StatusEvent(message=message)
        case MetricsMessage():
            return MetricsEvent(message=message)
        case AnalysisUpdate():
            return AnalysisEvent(message=message)
        case ErrorMessage():
            warning = StatusMessage(
                state="warning",
                message=f"{message.code.value}: {message.message}",
                session_id=message.session_id,
                attempt_id=message.attempt_id,
                connection_id=message.connection_id,
            )
            return StatusEvent(message=warning)
    return None
