"""``Session``: the anyio shell that runs the pure SessionMachine with real time and ports.

One session owns one task group (``async with Session(...)``). Every machine step happens
under one lock (``_dispatch``): commands (start/stop) are dispatched by the caller's task,
facts by the tasks that observe them — the driver task feeds timer expiries and the events
posted (never blocking) by the operation tasks: a permission request, a capture (start, then
pump its frames), a connection (connect, then receive, and finally close: the transport is
closed by the task that connected it, as the ``Transport`` port requires), the ``start`` and
``stop`` messages (sent by a task of their own, so that a connection that cannot take them
never holds the machine: the start and stop deadlines fire whatever the socket does; every
send is also bounded by ``send_timeout``). Effects run in order, inline, and every one is
bounded; teardown effects cancel and await the matching task, so when an attempt ends
nothing of it is left running. Leaving the ``async with`` (also on cancellation) aborts
whatever is active in a shielded scope.

The channel from the operation tasks to the driver is bounded (:data:`EVENT_CHANNEL_LIMIT`
facts). A task posting to a full channel waits: the receiver then stops reading the
transport, whose own inbox is bounded too, so a flood of server messages ends up as TCP
backpressure on the server and nothing is dropped. The few facts found by effects the driver
itself runs (a failed send while flushing audio) can never wait for the driver: they go to a
small side queue the driver reads first. The recorder's ``open`` and ``close`` (files,
zipping) run in a worker thread; ``record`` is called on the loop and must not block (the
session bundle hands its writes to a writer thread).

Audio captured before the backend's ``streaming`` acknowledgment is buffered (bounded by the
start timeout's worth of audio; the oldest frames are dropped and counted beyond that) and
sent right after it, in order. Frames above 64 KiB are split.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from echopanel.client.events import (
    ErrorEvent,
    SessionEvent,
    StateChanged,
    SummaryEvent,
    event_for_message,
)
from echopanel.client.recorder import Recorder
from echopanel.errors import (
    EchoPanelError,
    ErrorCode,
    ProtocolError,
    SessionError,
    SessionStateError,
    TransportError,
)
from echopanel.ports import Capture, PermissionGate, PermissionKind, Transport
from echopanel.protocol.frames import HEADER_BYTES, MAX_FRAME_BYTES, encode_audio_frame
from echopanel.protocol.messages import (
    AsrFinal,
    AsrPartial,
    FinalSummary,
    ResumeMessage,
    ServerMessage,
    Source,
    StatusMessage,
    decode_server,
    encode,
)
from echopanel.session import (
    AbortRequested,
    AnnounceState,
    CaptureEnded,
    CaptureFailed,
    CaptureStarted,
    CloseTransport,
    Connect,
    Connected,
    ConnectFailed,
    CreateBundle,
    Effect,
    EmitMessage,
    EndAttempt,
    EnterListening,
    Event,
    MessageReceived,
    PermissionAnswered,
    RejectStart,
    ReportError,
    RequestPermission,
    SendResume,
    SendStart,
    SendStop,
    SessionMachine,
    StartCapture,
    StartRequested,
    StopCapture,
    StopRequested,
    TimerFired,
    TransportClosed,
)
from echopanel.session.config import SessionConfig

# SessionStateError lives in echopanel.errors; re-exported here for older imports
__all__ = ["EVENT_CHANNEL_LIMIT", "HISTORY_LIMIT", "Session", "SessionStateError"]

logger = logging.getLogger("echopanel.session")

_CLEANUP_TIMEOUT = 2.0
#: how long a failed send waits for the receiver to report the close it ran into (the peer
#: may have sent an error just before closing, which must win over "connection closed")
_SEND_FAILURE_GRACE = 2.0
#: events a session keeps for its iterators (about an hour of partials and metrics)
HISTORY_LIMIT = 20_000
#: facts waiting for the driver at most; a task posting to a full channel waits
EVENT_CHANNEL_LIMIT = 256
_MAX_PCM = MAX_FRAME_BYTES - HEADER_BYTES  # 65532, even
_BYTES_PER_SECOND = 32_000
_MIN_BUFFER = 4 * MAX_FRAME_BYTES


@attrs.define(eq=False)
class _Task:
    """A task of the session's group that can be cancelled and awaited."""

    name: str
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    done: anyio.Event = attrs.field(factory=anyio.Event)

    async def cancel_and_wait(self) -> None:
        self.scope.cancel()
        with anyio.move_on_after(_CLEANUP_TIMEOUT):
            await self.done.wait()


@attrs.define(eq=False)
class _Attempt:
    """Live resources of one attempt (the machine holds the facts)."""

    attempt_id: str
    captures: dict[Source, Capture] = attrs.field(factory=dict)
    capture_tasks: dict[Source, _Task] = attrs.field(factory=dict)
    transport: Transport | None = None
    transport_task: _Task | None = None
    close_code: int | None = None  # what the transport task closes with (CloseTransport)
    others: list[_Task] = attrs.field(factory=list)
    streaming: bool = False
    buffer: deque[tuple[Source, bytes]] = attrs.field(factory=deque)
    buffered_bytes: int = 0
    dropped_frames: int = 0  # dropped from the pre-acknowledgment buffer (it was full)
    carry: dict[Source, bytes] = attrs.field(factory=dict)
    connection: int = 0  # the current connection's number (Connect.connection)
    #: per connection number, set once its receiver has reported how the connection ended
    receivers: dict[int, anyio.Event] = attrs.field(factory=dict)
    sent_bytes: dict[Source, int] = attrs.field(factory=dict)  # audio sent, per source
    reconnecting: bool = False  # the buffer then holds up to reconnect_buffer seconds
    #: per source, the newest audio sent (offset in bytes, pcm), up to reconnect_buffer
    #: seconds: after a resume, what the server never received is sent again from here
    sent_ring: dict[Source, deque[tuple[int, bytes]]] = attrs.field(factory=dict)
    #: per source, the audio position the server said it has (the resumed ACK)
    server_position: dict[str, float] | None = None
    #: server sessions after the first (the server lost the session) and, per source, the
    #: audio position where the current one starts: its finals are re-based onto the
    #: session's timeline and get unique segment ids (``<id>~<part>``)
    part: int = 0
    offsets: dict[str, float] = attrs.field(factory=dict)
    settled: anyio.Event = attrs.field(factory=anyio.Event)  # listening or ended
    ended: anyio.Event = attrs.field(factory=anyio.Event)
    error: SessionError | None = None
    outcome: str | None = None


class Session:
    """One live transcription session (see the module docstring).

    Use as ``async with Session(config) as s: await s.start(); ...; await s.stop()``.
    Factories default to the real adapters (imported only then): a
    ``WebSocketTransport``, ``echopanel.capture.default_capture_factory`` and
    ``echopanel.capture.default_permission_gate()``.
    """

    def __init__(
        self,
        config: SessionConfig,
        *,
        transport_factory: Callable[[], Transport] | None = None,
        capture_factory: Callable[[Source], Capture] | None = None,
        permission_gate: PermissionGate | None = None,
        recorder: Recorder | None = None,
        on_event: Callable[[SessionEvent], None] | None = None,
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self._machine = SessionMachine(config, id_factory=id_factory, jitter=random.random)
        self._transport_factory = transport_factory
        self._capture_factory = capture_factory
        self._gate = permission_gate
        self._owns_gate = permission_gate is None
        self._recorder = recorder
        self._on_event = on_event
        self._tg: anyio.abc.TaskGroup | None = None
        self._lock: anyio.Lock | None = None
        self._audio_lock: anyio.Lock | None = None
        self._send: MemoryObjectSendStream[Event | None] | None = None
        self._receive: MemoryObjectReceiveStream[Event | None] | None = None
        # facts posted by effects the driver runs itself: never wait for the driver
        self._side: deque[Event] = deque()
        self._attempt: _Attempt | None = None
        # the most recent events, for iterators that fall behind or start late; bounded
        self._history: deque[SessionEvent] = deque(maxlen=HISTORY_LIMIT)
        self._history_total = 0  # events emitted so far (absolute index of the next one)
        self._history_changed: anyio.Event | None = None
        self._finished = False
        self._closed = False

    # ------------------------------------------------------------------ properties

    @property
    def state(self) -> str:
        """``idle``, ``starting``, ``listening``, ``reconnecting``, ``finalizing`` or ``error``."""
        return self._machine.state

    @property
    def step(self) -> str | None:
        return self._machine.step

    @property
    def session_id(self) -> str | None:
        return self._machine.session_id

    @property
    def attempt_id(self) -> str | None:
        return self._machine.attempt_id

    @property
    def connection_id(self) -> str | None:
        return self._machine.connection_id

    @property
    def dropped_frames(self) -> int:
        """Frames this attempt dropped before the server acknowledged (pre-ack buffer full)."""
        return self._attempt.dropped_frames if self._attempt is not None else 0

    @property
    def summary(self) -> FinalSummary | None:
        return self._machine.summary

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closed:
            raise SessionStateError(self.state, "enter a Session twice (it runs once)")
        self._lock = anyio.Lock()
        self._audio_lock = anyio.Lock()
        self._send, self._receive = anyio.create_memory_object_stream[Event | None](
            EVENT_CHANNEL_LIMIT
        )
        self._history_changed = anyio.Event()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._drive)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None
        try:
            with anyio.CancelScope(shield=True):
                await self._dispatch(AbortRequested())
                await self._cancel_leftovers()
                if self._owns_gate and self._gate is not None:
                    with anyio.move_on_after(_CLEANUP_TIMEOUT):
                        await self._gate.aclose()
        finally:
            self._closed = True
            self._finish_history()
            tg.cancel_scope.cancel()
            try:
                # raises when an enclosing scope was cancelled: close the channel anyway
                suppressed = await tg.__aexit__(exc_type, exc, tb)
            finally:
                assert self._send is not None and self._receive is not None
                self._send.close()
                self._receive.close()
        return suppressed

    def _require_open(self, what: str) -> None:
        if self._tg is None or self._closed:
            raise SessionStateError(self.state, f"{what} outside `async with Session(...)`")

    # ------------------------------------------------------------------ public API

    async def start(self) -> None:
        """Start an attempt; return once listening.

        Raises :class:`~echopanel.errors.SessionError` (code, message) when the attempt
        fails, after everything it started was torn down; :class:`SessionStateError` when a
        session is already active (nothing new is started). If :meth:`stop` is called while
        starting, the attempt is cancelled cleanly and ``start`` returns with state ``idle``.
        """
        self._require_open("start")
        self._finished = False
        effects = await self._dispatch(StartRequested())
        rejected = next((e for e in effects if isinstance(e, RejectStart)), None)
        if rejected is not None:
            raise SessionStateError(rejected.state, "start: a session is already active")
        attempt = self._attempt
        assert attempt is not None
        try:
            await attempt.settled.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._dispatch(AbortRequested())
            raise
        if attempt.error is not None:
            raise attempt.error

    async def stop(self) -> FinalSummary | None:
        """Stop gracefully: ``stop`` message, bounded wait for the final summary, ``idle``.

        Returns the summary. Raises ``SessionError`` if the session failed while stopping —
        with code ``summary_missing`` when the connection closed or the stop timeout passed
        before the summary (the finals already received stand). Harmless when not active.
        """
        self._require_open("stop")
        attempt = self._attempt
        if attempt is None or attempt.ended.is_set():
            return self.summary
        await self._dispatch(StopRequested())
        await attempt.ended.wait()
        if attempt.error is not None:
            raise attempt.error
        return self.summary

    async def wait_closed(self) -> None:
        """Return once the current attempt ended (stopped, auto-stopped at capture end, or
        failed). Raises ``SessionError`` if it ended in error."""
        attempt = self._attempt
        if attempt is None:
            return
        await attempt.ended.wait()
        if attempt.error is not None:
            raise attempt.error

    async def events(self) -> AsyncIterator[SessionEvent]:
        """Every event of this session from its beginning; ends when the attempt is over.

        The session keeps the last :data:`HISTORY_LIMIT` events: an iterator that falls
        further behind (or starts later) than that skips the oldest ones.
        """
        index = 0
        while True:
            while index < self._history_total:
                first = self._history_total - len(self._history)
                index = max(index, first)
                yield self._history[index - first]
                index += 1
            if self._finished or self._history_changed is None:
                return
            await self._history_changed.wait()

    # ------------------------------------------------------------------ the driver

    def _now(self) -> float:
        """The session's clock (anyio's monotonic time): the ``now`` of every machine step."""
        return anyio.current_time()

    async def _post(self, event: Event) -> None:
        """Hand a fact to the driver; waits while the channel is full (backpressure)."""
        if self._send is not None:
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._send.send(event)

    def _post_soon(self, event: Event) -> None:
        """Hand a fact to the driver without waiting (from code the driver may be running)."""
        self._side.append(event)
        self._wake()

    def _wake(self) -> None:
        """Make the driver look again (its deadline may have moved); never waits."""
        if self._send is not None:
            with contextlib.suppress(
                anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError
            ):
                self._send.send_nowait(None)

    async def _drive(self) -> None:
        """Feed posted facts and timer expiries to the machine, one at a time."""
        assert self._receive is not None
        while True:
            while self._side:
                await self._dispatch(self._side.popleft())
            deadline = self._machine.deadline
            item: Event | None = None
            timed_out = True
            with anyio.move_on_at(math.inf if deadline is None else deadline):
                item = await self._receive.receive()
                timed_out = False
            if timed_out:
                assert deadline is not None
                # a timer may wake a hair early: clamp to the deadline slept for (aioquic)
                await self._dispatch(TimerFired(), at_least=deadline)
            elif item is not None:
                await self._dispatch(item)

    async def _dispatch(self, event: Event, *, at_least: float = -math.inf) -> list[Effect]:
        assert self._lock is not None
        async with self._lock:
            machine = self._machine
            effects = machine.handle(event, max(at_least, self._now()))
            if machine.last_drop is not None:
                logger.debug("%s", machine.last_drop)
            for effect in effects:
                await self._run(effect)
        self._wake()  # the deadline may have moved
        return effects

    # ------------------------------------------------------------------ effects

    async def _run(self, effect: Effect) -> None:
        attempt = self._attempt
        match effect:
            case AnnounceState(state=state, previous=previous, step=step):
                if attempt is not None:
                    attempt.reconnecting = state == "reconnecting"
                if state == "reconnecting":
                    self._log(logging.WARNING, "Connection lost: reconnecting")
                elif previous == "reconnecting" and state == "listening":
                    self._log(logging.INFO, "Session resumed")
                self._emit(StateChanged(state=state, previous=previous, step=step))
            case CreateBundle():
                await self._begin_attempt(effect)
            case RequestPermission(kind=kind):
                assert attempt is not None
                attempt.others.append(self._spawn(f"permission {kind}", self._ask, attempt, kind))
            case StartCapture(source=source):
                assert attempt is not None
                attempt.capture_tasks[source] = self._spawn(
                    f"capture {source}", self._capture, attempt, source
                )
            case StopCapture(source=source):
                assert attempt is not None
                await self._stop_capture(attempt, source)
            case Connect(url=url, headers=headers, connection=connection):
                assert attempt is not None
                self._log(logging.INFO, "WebSocket connecting", url=url)
                attempt.connection = connection
                attempt.transport = None
                attempt.transport_task = self._spawn(
                    "transport", self._connect, attempt, url, dict(headers), connection
                )
            case SendResume(session_id=sid, resume_token=token, last_segment_id=last):
                assert attempt is not None
                suffix = f"~{attempt.part}"
                if attempt.part and last is not None and last.endswith(suffix):
                    last = last.removesuffix(suffix)  # the server's own id
                message = ResumeMessage(
                    session_id=sid,
                    resume_token=token,
                    last_segment_id=last,
                    audio_seconds={
                        source: round(n / _BYTES_PER_SECOND, 3)
                        for source, n in attempt.sent_bytes.items()
                    },
                )
                attempt.others.append(
                    self._spawn("send resume", self._send_text, attempt, encode(message))
                )
            case SendStart(message=message) | SendStop(message=message):
                assert attempt is not None
                if isinstance(effect, SendStart) and attempt.connection > 0:
                    attempt.part += 1  # a new server session continues this one
                    attempt.offsets = {
                        source: n / _BYTES_PER_SECOND for source, n in attempt.sent_bytes.items()
                    }
                    self._log(logging.WARNING, "Server lost the session: starting a new one")
                if isinstance(effect, SendStop):
                    self._log(logging.INFO, "Session stopping")
                # not inline: a send blocked on a full socket must not hold the machine (the
                # deadlines need it); a failure comes back as TransportClosed
                attempt.others.append(
                    self._spawn(f"send {message.type}", self._send_text, attempt, encode(message))
                )
            case EnterListening():
                assert attempt is not None
                await self._flush_audio(attempt)
                self._log(logging.INFO, "Session started")
                attempt.settled.set()
            case EmitMessage(message=message):
                if (
                    attempt is not None
                    and isinstance(message, StatusMessage)
                    and message.resumed
                    and message.audio_seconds is not None
                ):
                    attempt.server_position = dict(message.audio_seconds)
                event = event_for_message(message)
                if event is not None:
                    self._emit(event)
            case CloseTransport(code=code):
                assert attempt is not None
                await self._close_transport(attempt, code)
            case ReportError(code=code, message=message):
                assert attempt is not None
                attempt.error = SessionError(code, message)
                self._log(logging.ERROR, "Session failed", code=code.value, reason=message)
                self._emit(ErrorEvent(code=code, message=message))
            case EndAttempt(outcome=outcome, summary=summary):
                assert attempt is not None
                await self._end_attempt(attempt, outcome, summary)
            case _:
                pass  # RejectStart: start() raises SessionStateError

    async def _begin_attempt(self, effect: CreateBundle) -> None:
        self._attempt = _Attempt(attempt_id=effect.attempt_id)
        self._log(logging.INFO, "Session starting", sources=list(effect.sources))
        recorder = self._recorder
        if recorder is not None:
            try:  # files: off the event loop
                await anyio.to_thread.run_sync(
                    functools.partial(
                        recorder.open,
                        session_id=effect.session_id,
                        attempt_id=effect.attempt_id,
                        sources=effect.sources,
                        started_at=time.time(),
                    )
                )
            except Exception:
                logger.exception("recorder.open failed")

    async def _end_attempt(
        self, attempt: _Attempt, outcome: str, summary: FinalSummary | None
    ) -> None:
        await self._cancel_tasks(attempt)
        if summary is not None:
            self._emit(SummaryEvent(summary=summary))
        attempt.outcome = outcome
        self._log(logging.INFO, "Session ended", outcome=outcome)
        recorder = self._recorder
        if recorder is not None:
            try:  # files and zipping: off the event loop
                await anyio.to_thread.run_sync(
                    functools.partial(
                        recorder.close,
                        outcome=outcome,
                        ended_at=time.time(),
                        summary=summary,
                        client_dropped_frames=attempt.dropped_frames,
                    )
                )
            except Exception:
                logger.exception("recorder.close failed")
        attempt.settled.set()
        attempt.ended.set()
        self._finish_history()

    async def _cancel_tasks(self, attempt: _Attempt) -> None:
        with anyio.CancelScope(shield=True):
            tasks = [*attempt.others, *attempt.capture_tasks.values()]
            if attempt.transport_task is not None:
                tasks.append(attempt.transport_task)
            for task in tasks:
                await task.cancel_and_wait()

    async def _cancel_leftovers(self) -> None:
        if self._attempt is not None:
            await self._cancel_tasks(self._attempt)

    # ------------------------------------------------------------------ events out

    def _emit(self, event: SessionEvent) -> None:
        self._history.append(event)
        self._history_total += 1
        if self._history_changed is not None:
            self._history_changed.set()
            self._history_changed = anyio.Event()
        if self._recorder is not None:
            try:
                self._recorder.record(event, time.time())
            except Exception:
                logger.exception("recorder.record failed")
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event callback failed for %r", event)

    def _finish_history(self) -> None:
        self._finished = True
        if self._history_changed is not None:
            self._history_changed.set()
            self._history_changed = anyio.Event()

    def _log(self, level: int, message: str, **extra: Any) -> None:
        ids = {
            "session_id": self.session_id,
            "attempt_id": self.attempt_id,
            "connection_id": self.connection_id,
        }
        logger.log(level, message, extra={**ids, **extra})

    # ------------------------------------------------------------------ operation tasks

    def _spawn(self, name: str, func: Callable[..., Awaitable[None]], *args: Any) -> _Task:
        task = _Task(name=name)
        assert self._tg is not None

        async def runner() -> None:
            try:
                with task.scope:
                    await func(*args)
            finally:
                task.done.set()

        self._tg.start_soon(runner, name=f"echopanel {name}")
        return task

    async def _ask(self, attempt: _Attempt, kind: PermissionKind) -> None:
        gate = self._gate
        if gate is None:
            from echopanel.capture import default_permission_gate

            gate = self._gate = default_permission_gate()
        try:
            answer = await gate.request(kind)
            granted, detail = answer.granted, answer.detail
        except EchoPanelError as exc:
            granted, detail = False, exc.message
        await self._post(
            PermissionAnswered(
                attempt_id=attempt.attempt_id, kind=kind, granted=granted, detail=detail
            )
        )

    async def _capture(self, attempt: _Attempt, source: Source) -> None:
        """Start the capture, then pump its frames until it ends."""
        aid = attempt.attempt_id
        try:
            factory = self._capture_factory
            if factory is None:
                from echopanel.capture import default_capture_factory

                factory = default_capture_factory
            capture = factory(source)
            attempt.captures[source] = capture
            await capture.start()
        except EchoPanelError as exc:
            await self._post(CaptureFailed(attempt_id=aid, source=source, message=exc.message))
            return
        except Exception as exc:  # an adapter that broke its contract
            await self._post(CaptureFailed(attempt_id=aid, source=source, message=repr(exc)))
            return
        await self._post(CaptureStarted(attempt_id=aid, source=source))
        try:
            async for pcm in capture.frames():
                await self._on_frame(attempt, source, pcm)
        except EchoPanelError as exc:
            await self._post(CaptureFailed(attempt_id=aid, source=source, message=exc.message))
            return
        await self._post(CaptureEnded(attempt_id=aid, source=source))

    async def _stop_capture(self, attempt: _Attempt, source: Source) -> None:
        with anyio.CancelScope(shield=True):
            capture = attempt.captures.get(source)
            task = attempt.capture_tasks.get(source)
            if capture is None and task is not None:  # still inside the factory/start
                await task.cancel_and_wait()
                capture = attempt.captures.get(source)
            if capture is not None:
                with anyio.move_on_after(_CLEANUP_TIMEOUT):
                    try:
                        await capture.aclose()
                    except Exception:
                        logger.exception("stopping the %s capture failed", source)
            if task is not None:
                # the pump ends once frames() does; bounded, then cancelled
                with anyio.move_on_after(_CLEANUP_TIMEOUT):
                    await task.done.wait()
                await task.cancel_and_wait()

    async def _connect(
        self, attempt: _Attempt, url: str, headers: dict[str, str], connection: int = 0
    ) -> None:
        """Open the transport, receive until it closes, then wait to be cancelled; on the
        way out (cancelled by ``_close_transport`` or the attempt's end) close it, here."""
        # Entered before connect: any scope the transport keeps on this task is inside it,
        # so shielding it below protects the close without nesting a new scope over them.
        held: list[Transport] = []  # this task's transport (a reconnect makes another)
        with anyio.CancelScope() as owner:
            try:
                await self._connect_and_receive(attempt, url, headers, connection, held)
                await anyio.sleep_forever()  # the close waits for CloseTransport's code
            finally:
                owner.shield = True
                owner.deadline = anyio.current_time() + _CLEANUP_TIMEOUT
                transport = held[0] if held else None
                if transport is not None:
                    code = attempt.close_code
                    try:
                        await (transport.aclose() if code is None else transport.aclose(code))
                    except Exception:
                        logger.exception("closing the transport failed")

    async def _connect_and_receive(
        self,
        attempt: _Attempt,
        url: str,
        headers: dict[str, str],
        connection: int,
        held: list[Transport],
    ) -> None:
        done = attempt.receivers[connection] = anyio.Event()
        try:
            await self._connect_and_receive_inner(attempt, url, headers, connection, held)
        finally:
            done.set()

    async def _connect_and_receive_inner(
        self,
        attempt: _Attempt,
        url: str,
        headers: dict[str, str],
        connection: int,
        held: list[Transport],
    ) -> None:
        aid = attempt.attempt_id
        try:
            factory = self._transport_factory
            if factory is None:
                from echopanel.client.transport import WebSocketTransport

                transport: Transport = WebSocketTransport(
                    connect_timeout=self.config.start_timeout,
                    send_timeout=self.config.send_timeout,
                    task_group=self._tg,
                )
            else:
                transport = factory()
            held.append(transport)
            attempt.transport = transport
            await transport.connect(url, headers)
        except EchoPanelError as exc:
            await self._post(
                ConnectFailed(attempt_id=aid, message=exc.message, connection=connection)
            )
            return
        except Exception as exc:
            await self._post(
                ConnectFailed(attempt_id=aid, message=repr(exc), connection=connection)
            )
            return
        await self._post(Connected(attempt_id=aid, connection=connection))
        while True:
            try:
                data = await transport.receive()
            except TransportError as exc:
                await self._post(_closed_event(aid, exc, connection))
                return
            if isinstance(data, bytes):
                continue
            try:
                message = _rebase(decode_server(data), attempt.part, attempt.offsets)
            except ProtocolError as exc:
                self._log(logging.WARNING, "Undecodable server message dropped", reason=exc.message)
                continue
            await self._post(MessageReceived(attempt_id=aid, message=message))

    async def _send_text(self, attempt: _Attempt, text: str) -> None:
        transport, connection = attempt.transport, attempt.connection
        if transport is None:
            return
        try:
            await transport.send_text(text)
        except TransportError as exc:
            # A peer that answers with an error and closes (e.g. ``unauthorized``) makes this
            # send fail while its error is still being read: the receiver reports the close
            # after every message the peer sent before it, so let it speak first (bounded).
            received = attempt.receivers.get(connection)
            if received is not None:
                with anyio.move_on_after(_SEND_FAILURE_GRACE):
                    await received.wait()
                if received.is_set():
                    return
            await self._post(_closed_event(attempt.attempt_id, exc, connection))

    async def _close_transport(self, attempt: _Attempt, code: int) -> None:
        """Record the close code; the transport task closes the transport as it ends."""
        attempt.close_code = code
        with anyio.CancelScope(shield=True):
            if attempt.transport_task is not None:
                await attempt.transport_task.cancel_and_wait()
            attempt.streaming = False

    # ------------------------------------------------------------------ audio

    async def _on_frame(self, attempt: _Attempt, source: Source, pcm: bytes) -> None:
        carry = attempt.carry.pop(source, b"")
        if carry:
            pcm = carry + pcm
        if len(pcm) % 2:
            attempt.carry[source] = pcm[-1:]
            pcm = pcm[:-1]
        if not pcm:
            return
        assert self._audio_lock is not None
        async with self._audio_lock:
            if attempt.streaming:
                await self._send_audio(attempt, source, pcm)
            else:
                self._buffer(attempt, source, pcm)

    def _buffer(
        self, attempt: _Attempt, source: Source, pcm: bytes, *, front: bool = False
    ) -> None:
        seconds = self.config.start_timeout
        if attempt.reconnecting:  # while disconnected: the reconnect buffer
            seconds = max(seconds, self.config.reconnect_buffer)
        limit = max(int(seconds * _BYTES_PER_SECOND) * len(self.config.sources), _MIN_BUFFER)
        if front:
            attempt.buffer.appendleft((source, pcm))
        else:
            attempt.buffer.append((source, pcm))
        attempt.buffered_bytes += len(pcm)
        while attempt.buffered_bytes > limit and len(attempt.buffer) > 1:
            _, dropped = attempt.buffer.popleft()
            attempt.buffered_bytes -= len(dropped)
            attempt.dropped_frames += 1
            if attempt.dropped_frames == 1:
                self._log(
                    logging.WARNING,
                    "Audio buffer full while disconnected: dropping oldest frames"
                    if attempt.reconnecting
                    else "Pre-start audio buffer full: dropping oldest frames",
                )

    async def _flush_audio(self, attempt: _Attempt) -> None:
        assert self._audio_lock is not None
        async with self._audio_lock:
            if attempt.server_position is not None:  # resumed: first what never arrived
                for source, pcm in self._unreceived(attempt, attempt.server_position):
                    self._buffer(attempt, source, pcm, front=True)
                attempt.server_position = None
            while attempt.buffer:
                source, pcm = attempt.buffer.popleft()
                attempt.buffered_bytes -= len(pcm)
                if not await self._send_audio(attempt, source, pcm):
                    return  # the frame went back to the buffer, for a reconnect
            attempt.streaming = True

    def _unreceived(
        self, attempt: _Attempt, position: dict[str, float]
    ) -> list[tuple[Source, bytes]]:
        """Audio sent but not received by the server (newest first, to be put in front)."""
        out: list[tuple[Source, bytes]] = []
        for source, ring in attempt.sent_ring.items():
            have = int(position.get(source, 0.0) * _BYTES_PER_SECOND) // 2 * 2
            sent = attempt.sent_bytes.get(source, 0)
            if have >= sent:
                continue
            chunks = [
                pcm[max(0, have - offset) :] for offset, pcm in ring if offset + len(pcm) > have
            ]
            missing = b"".join(chunks)
            if missing:
                self._log(
                    logging.INFO,
                    "Resending audio the server did not receive",
                    source=source,
                    seconds=round(len(missing) / _BYTES_PER_SECOND, 3),
                )
                attempt.sent_bytes[source] = sent - len(missing)  # sent again below
                out.append((source, missing))
        return out

    def _remember(self, attempt: _Attempt, source: Source, offset: int, pcm: bytes) -> None:
        ring = attempt.sent_ring.setdefault(source, deque())
        ring.append((offset, pcm))
        limit = int(self.config.reconnect_buffer * _BYTES_PER_SECOND)
        while ring and ring[-1][0] + len(ring[-1][1]) - ring[0][0] - len(ring[0][1]) >= limit:
            ring.popleft()

    async def _send_audio(self, attempt: _Attempt, source: Source, pcm: bytes) -> bool:
        transport, connection = attempt.transport, attempt.connection
        if transport is None:
            self._buffer(attempt, source, pcm, front=True)
            return False
        sent = 0
        try:
            for offset in range(0, len(pcm), _MAX_PCM):
                chunk = pcm[offset : offset + _MAX_PCM]
                await transport.send_bytes(encode_audio_frame(source, chunk))
                sent += len(chunk)
                offset_before = attempt.sent_bytes.get(source, 0)
                attempt.sent_bytes[source] = offset_before + len(chunk)
                if self.config.reconnect_window and self.config.reconnect_buffer:
                    self._remember(attempt, source, offset_before, chunk)
        except TransportError as exc:
            attempt.streaming = False
            self._buffer(attempt, source, pcm[sent:], front=True)  # kept for a reconnect
            # may run inside the driver (flushing after the acknowledgment): never wait here
            self._post_soon(_closed_event(attempt.attempt_id, exc, connection))
            return False
        return True


def _rebase(message: ServerMessage, part: int, offsets: dict[str, float]) -> ServerMessage:
    """A later server session's message on the session's timeline, with unique ids."""
    if not part:
        return message

    def shift(source: str, t: float) -> float:
        return round(t + offsets.get(source, 0.0), 3)

    tag = f"~{part}"
    match message:
        case AsrFinal():
            return attrs.evolve(
                message,
                segment_id=message.segment_id + tag,
                t0=shift(message.source, message.t0),
                t1=shift(message.source, message.t1),
            )
        case AsrPartial():
            return attrs.evolve(
                message, t0=shift(message.source, message.t0), t1=shift(message.source, message.t1)
            )
        case FinalSummary():
            entries = tuple(
                attrs.evolve(
                    e,
                    segment_id=e.segment_id + tag,
                    t0=shift(e.source, e.t0),
                    t1=shift(e.source, e.t1),
                )
                for e in message.transcript
            )
            return attrs.evolve(message, transcript=entries)
    return message


_GENERIC_CLOSE = re.compile(r"connection (?:closed|lost)(?: \(\d+(?:: (?P<reason>.*))?\))?")


def _closed_event(
    attempt_id: str, exc: TransportError, connection: int | None = None
) -> TransportClosed:
    """The machine's fact for a closed transport. The transport's generic wording
    ("connection closed (1000: bye)", "connection lost") is reduced to the peer's close
    reason, if any: the machine words the message from the close code."""
    code = exc.code if exc.code is not ErrorCode.CONNECTION_FAILED else None
    message = exc.message
    generic = _GENERIC_CLOSE.fullmatch(message)
    if generic is not None:
        message = generic.group("reason") or ""
    return TransportClosed(
        attempt_id=attempt_id,
        close_code=exc.close_code,
        code=code,
        message=message,
        connection=connection,
    )
