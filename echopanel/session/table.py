"""The session state graph as data: states, steps and transitions.

This table is the single source of truth: :class:`~echopanel.session.SessionMachine` feeds
it to ``transitions.Machine`` and :mod:`echopanel.session.diagram` renders it as Mermaid
(both through :mod:`echopanel.statetable`, which the server core's table shares).

States are flat names; the four steps of ``starting`` are named ``starting_<step>``
(permissions → capture → connecting → awaiting_ack). A row's ``dest`` of ``None`` is an
*internal* transition (stays in the state, runs ``after``). ``conditions``, ``unless``,
``before`` (runs before the state changes) and ``after`` name methods of the machine's
private model. A (state, trigger) pair with no row is *dropped* by the machine
(``DropReason.NO_ROW``): late or stale facts are expected in an async world.
"""

from __future__ import annotations

from typing import Final

from echopanel.statetable import Row, triggers_of
from echopanel.statetable import row as _row

__all__ = [
    "ACTIVE_STATES",
    "STARTING_STATES",
    "STATES",
    "TRANSITIONS",
    "TRIGGERS",
    "Row",
    "phase_of",
    "step_of",
]

IDLE: Final = "idle"
PERMISSIONS: Final = "starting_permissions"
CAPTURE: Final = "starting_capture"
CONNECTING: Final = "starting_connecting"
AWAITING_ACK: Final = "starting_awaiting_ack"
LISTENING: Final = "listening"
FINALIZING: Final = "finalizing"
RECONNECTING: Final = "reconnecting"
ERROR: Final = "error"

STARTING_STATES: Final[tuple[str, ...]] = (PERMISSIONS, CAPTURE, CONNECTING, AWAITING_ACK)
STATES: Final[tuple[str, ...]] = (
    IDLE,
    *STARTING_STATES,
    LISTENING,
    RECONNECTING,
    FINALIZING,
    ERROR,
)
#: States in which something may be running (captures, transport, timers).
ACTIVE_STATES: Final[tuple[str, ...]] = (*STARTING_STATES, LISTENING, RECONNECTING, FINALIZING)
_CONNECTED: Final[tuple[str, ...]] = (CONNECTING, AWAITING_ACK, LISTENING)


def phase_of(state: str) -> str:
    """The top-level state: ``starting_capture`` → ``starting``."""
    return "starting" if state.startswith("starting_") else state


def step_of(state: str) -> str | None:
    """The step within ``starting`` (``permissions`` …), else ``None``."""
    return state.removeprefix("starting_") if state.startswith("starting_") else None


TRANSITIONS: Final[tuple[Row, ...]] = (
    # --- start: a new attempt from idle (new session) or error (retry, same session)
    _row(
        "start", (IDLE, ERROR), PERMISSIONS, before="begin_attempt", after="request_next_permission"
    ),
    _row("start", ACTIVE_STATES, None, after="reject_start"),
    # --- permissions, one kind at a time, only those the sources need
    _row(
        "permission_granted",
        PERMISSIONS,
        None,
        unless=("all_permissions_granted",),
        after="request_next_permission",
    ),
    _row(
        "permission_granted",
        PERMISSIONS,
        CAPTURE,
        conditions=("all_permissions_granted",),
        after="start_next_capture",
    ),
    _row("permission_denied", PERMISSIONS, ERROR, after="fail"),
    # --- captures, one source at a time
    _row(
        "capture_started",
        CAPTURE,
        None,
        unless=("all_captures_started",),
        after="start_next_capture",
    ),
    _row(
        "capture_started",
        CAPTURE,
        CONNECTING,
        conditions=("all_captures_started",),
        after="connect",
    ),
    _row(
        "capture_failed",
        (CAPTURE, CONNECTING, AWAITING_ACK, LISTENING, RECONNECTING),
        ERROR,
        after="fail",
    ),
    _row("capture_ended", (CAPTURE, CONNECTING, AWAITING_ACK, LISTENING, RECONNECTING), None),
    # --- connection and start handshake
    _row("connected", CONNECTING, AWAITING_ACK, after="send_start"),
    _row("connect_failed", CONNECTING, ERROR, after="fail"),
    _row("server_connected", _CONNECTED, None),
    _row("ack", AWAITING_ACK, LISTENING, after="enter_listening"),
    _row("message", (AWAITING_ACK, LISTENING, FINALIZING), None, after="emit_message"),
    # --- failures reported by the backend or the connection (``invalid_message`` without a
    # close only means the server dropped one message: the session goes on)
    _row("server_warning", (AWAITING_ACK, LISTENING, FINALIZING), None, after="emit_message"),
    _row("server_error", (*_CONNECTED, FINALIZING), ERROR, after="fail"),
    # --- an abnormal loss while listening: reconnect and resume (bounded by the window)
    _row(
        "transport_closed",
        (LISTENING, FINALIZING),
        RECONNECTING,
        conditions=("can_reconnect",),
        after="begin_reconnect",
    ),
    _row("timeout", RECONNECTING, ERROR, conditions=("outage_over",), after="fail"),
    _row("timeout", RECONNECTING, None, conditions=("backoff_due",), after="reconnect_now"),
    _row("timeout", RECONNECTING, None, after="retry"),  # a try took too long
    _row("connect_failed", RECONNECTING, None, after="retry"),
    _row("transport_closed", RECONNECTING, None, after="retry"),
    _row("connected", RECONNECTING, None, after="send_resume"),
    _row("server_connected", RECONNECTING, None),
    _row("message", RECONNECTING, None, after="emit_message"),  # the re-sent finals
    _row("server_warning", RECONNECTING, None, after="emit_message"),
    _row("server_error", RECONNECTING, None, conditions=("server_busy",), after="retry"),
    # the server no longer has the session: a new server session continues it (gap marked)
    _row("server_error", RECONNECTING, None, conditions=("session_unknown",), after="start_fresh"),
    _row("server_error", RECONNECTING, ERROR, after="fail"),  # resume_unknown, auth, …
    # lost after stop: resumed for the summary
    _row("ack", RECONNECTING, FINALIZING, conditions=("stopping",), after="resume_finalizing"),
    _row("ack", RECONNECTING, LISTENING, after="resume_listening"),
    _row("summary", RECONNECTING, IDLE, after="complete"),
    _row("stop", RECONNECTING, IDLE, after="complete"),  # ends with what was received
    _row("transport_closed", _CONNECTED, ERROR, after="fail"),
    _row("timeout", STARTING_STATES, ERROR, after="fail"),
    # --- stopping
    _row("auto_stop", LISTENING, FINALIZING, conditions=("should_auto_stop",), after="begin_stop"),
    _row("stop", LISTENING, FINALIZING, after="begin_stop"),
    _row("stop", STARTING_STATES, IDLE, after="cancel"),
    _row("abort", ACTIVE_STATES, IDLE, after="cancel"),
    _row("summary", FINALIZING, IDLE, after="complete"),
    # the server ended the session itself (a drain: flush, final_summary, close 1001)
    _row("summary", LISTENING, IDLE, after="complete"),
    # no summary (the connection closed first, or the stop timeout passed): not a success
    _row("transport_closed", FINALIZING, ERROR, after="fail"),
    _row("timeout", FINALIZING, ERROR, after="fail"),
)

#: Every trigger the table knows, in first-use order.
TRIGGERS: Final[tuple[str, ...]] = triggers_of(TRANSITIONS)
