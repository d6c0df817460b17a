"""The server session's phases as data: states and transitions.

This table is the single source of truth: :class:`~echopanel.server.core.ServerSession`
feeds it to ``transitions.Machine`` and :mod:`echopanel.server.core.diagram` renders it as
the Mermaid diagram in ``docs/architecture.md`` (both through :mod:`echopanel.statetable`,
which the client session's table shares).

Phases: ``accepted`` (the socket is open, the token not yet judged) → ``awaiting_start``
(bounded by the start timeout) → ``admitting`` (a valid ``start``: wait for the shared ASR,
a slot, the declared sources' streams) → ``streaming`` → ``finalizing`` (``stop``: bounded
flush; also on ``drain``) → ``closed``. A resumable session whose peer is lost abnormally
waits in ``parked`` (slot and streams held, nothing sent) until a ``resume`` re-attaches it
(back to ``streaming``) or the resume window passes. A connection whose first message is
``resume`` goes ``awaiting_start`` → ``admitting`` (the lookup) → ``closed`` (its socket
handed over, or ``resume_unknown``). Timers: the start timeout (``awaiting_start``),
the idle-audio timeout (``streaming``), the flush bound (``finalizing``), the resume window
(``parked``). A row's ``dest``
of ``None`` is an *internal* transition. A (phase, trigger) pair with no row is dropped by
the machine, which records why (:attr:`ServerSession.dropped`): late facts are expected in
an async world.
"""

from __future__ import annotations

from typing import Final

from echopanel.statetable import Row, triggers_of
from echopanel.statetable import row as _row

__all__ = [
    "ADMITTING",
    "AWAITING_START",
    "CLOSED",
    "FINALIZING",
    "INITIAL",
    "LIVE_PHASES",
    "PARKED",
    "PHASES",
    "STREAMING",
    "TRANSITIONS",
    "TRIGGERS",
    "Row",
]

ACCEPTED: Final = "accepted"
AWAITING_START: Final = "awaiting_start"
ADMITTING: Final = "admitting"
STREAMING: Final = "streaming"
FINALIZING: Final = "finalizing"
PARKED: Final = "parked"
CLOSED: Final = "closed"

INITIAL: Final = ACCEPTED
PHASES: Final[tuple[str, ...]] = (
    ACCEPTED,
    AWAITING_START,
    ADMITTING,
    STREAMING,
    FINALIZING,
    PARKED,
    CLOSED,
)
#: Every phase but ``closed``: the connection may still send and hold resources.
LIVE_PHASES: Final[tuple[str, ...]] = PHASES[:-1]
_READING: Final = (AWAITING_START, STREAMING)  # phases that judge incoming frames
_STARTED: Final = (STREAMING, FINALIZING, PARKED)


TRANSITIONS: Final[tuple[Row, ...]] = (
    # --- the upgrade's token decides: connected, or unauthorized (1008)
    _row("opened", ACCEPTED, AWAITING_START, conditions=("authorized",), after="greet"),
    _row("opened", ACCEPTED, CLOSED, unless=("authorized",), after="fail"),
    # --- frames: judged in awaiting_start and streaming, ignored after stop
    _row("start", AWAITING_START, ADMITTING, after="begin"),
    # --- resume (protocol 1.1) on a new connection: the session held here takes the socket
    _row("resume", AWAITING_START, ADMITTING, after="ask_resume"),
    _row("resume_accepted", ADMITTING, CLOSED, after="hand_over"),
    _row("resume_refused", ADMITTING, CLOSED, after="fail"),
    _row("invalid", _READING, None, unless=("over_invalid_budget",), after="report_invalid"),
    _row("invalid", _READING, CLOSED, conditions=("over_invalid_budget",), after="fail"),
    _row("fatal", _READING, CLOSED, after="fail"),
    _row("timeout", (AWAITING_START, STREAMING), CLOSED, after="fail"),
    # --- admission: shared ASR ready → slot → the declared sources' streams → streaming
    _row("asr_ready", ADMITTING, None, after="acquire_slot"),
    _row("asr_unavailable", ADMITTING, CLOSED, after="fail"),
    _row("slot_refused", ADMITTING, CLOSED, after="fail"),
    _row(
        "slot_acquired",
        ADMITTING,
        None,
        unless=("all_streams_open",),
        after="open_next_stream",
    ),
    _row(
        "slot_acquired",
        ADMITTING,
        STREAMING,
        conditions=("all_streams_open",),
        after="enter_streaming",
    ),
    _row(
        "stream_opened",
        ADMITTING,
        None,
        unless=("all_streams_open",),
        after="open_next_stream",
    ),
    _row(
        "stream_opened",
        ADMITTING,
        STREAMING,
        conditions=("all_streams_open",),
        after="enter_streaming",
    ),
    _row("stream_opened", (STREAMING, PARKED), None, after="feed_pending"),
    _row("stream_failed", (ADMITTING, STREAMING), CLOSED, after="fail"),
    # --- streaming
    _row("audio", STREAMING, None, after="accept_audio"),
    _row("asr_output", _STARTED, None, after="emit_updates"),
    _row("asr_failed", STREAMING, CLOSED, after="fail"),
    _row("audio_queued", _STARTED, None, after="report_queue"),
    _row("level_changed", _STARTED, None, after="report_level"),
    _row("metrics_tick", _STARTED, None, after="report_metrics"),
    _row("analysis_tick", STREAMING, None, after="analyze"),
    _row("analysis_done", _STARTED, None, after="send_analysis"),
    _row("recording_failed", _STARTED, None, after="warn_recording"),
    # --- stop: bounded flush, then final_summary and close 1000
    _row("stop", STREAMING, FINALIZING, after="begin_flush"),
    _row("asr_done", FINALIZING, None),
    _row("asr_failed", FINALIZING, None),
    _row("flushed", FINALIZING, CLOSED, conditions=("all_flushed",), after="summarize"),
    _row("timeout", FINALIZING, CLOSED, after="summarize"),
    # --- drain (graceful shutdown): a session is flushed and summarized, then close 1001
    _row("drain", STREAMING, FINALIZING, after="begin_drain"),
    _row("drain", (ACCEPTED, AWAITING_START, ADMITTING), CLOSED, after="drain_now"),
    # --- an abnormal loss parks a resumable session (slot and streams held) for the window
    _row(
        "peer_gone",
        (STREAMING, FINALIZING),
        PARKED,
        conditions=("resumable", "abnormal"),
        after="park",
    ),
    _row(
        "resume_requested",
        PARKED,
        FINALIZING,
        conditions=("token_matches", "was_finalizing"),
        after="reattach",
    ),
    _row(
        "resume_requested",
        (STREAMING, PARKED),
        STREAMING,
        conditions=("token_matches",),
        unless=("was_finalizing",),
        after="reattach",
    ),
    _row("asr_done", PARKED, None),  # a stop's flush goes on while parked
    _row("timeout", PARKED, CLOSED, after="expire"),
    _row("asr_failed", PARKED, None, conditions=("was_finalizing",)),
    _row("asr_failed", PARKED, CLOSED, after="abandon"),
    _row("drain", PARKED, CLOSED, after="abandon"),
    # --- every path out releases what it holds
    _row("slot_acquired", CLOSED, None, after="release_late_slot"),
    _row("peer_gone", LIVE_PHASES, CLOSED, after="abandon"),
    _row("fault", LIVE_PHASES, CLOSED, after="fail"),
)

#: Every trigger the table knows, in first-use order.
TRIGGERS: Final[tuple[str, ...]] = triggers_of(TRANSITIONS)
