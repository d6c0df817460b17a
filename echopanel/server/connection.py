"""``LiveConnection``: the I/O shell of one WebSocket on ``/ws/live-listener``.

The protocol's rules live in the pure core (:class:`~echopanel.server.core.ServerSession`);
this shell receives frames, sends messages, closes, runs the session's tasks (the reader,
the timer, per source an ASR task and a metrics task, the analysis loop, the recorder) and
carries out the core's actions, feeding their answers back as events.

One task group holds every task. ``Close`` closes the socket and cancels the group. Every
exit path — stop, disconnect, error, cancellation — ends in :meth:`_cleanup`, shielded and
run once every task has ended: the slot is released, streams and recorder closed, the
session forgotten. ``_Closed`` is the only exception used for control flow; it never
crosses the task group (each task is guarded).

Resume (protocol 1.1). When the peer of a resumable session is lost abnormally, the core
parks the session: the reader ends, every other task (ASR, recorder, timer) keeps running,
nothing is sent. A new connection whose first message is ``resume`` looks the session up in
``ServerState.resumable`` and offers it its socket (:meth:`take_over`); the session's core
decides (the token). On ``Attach`` the session reads and writes the new socket from then on,
and the new connection's handler only waits until the session no longer uses its socket
(``_handed_over``) — it never closes it.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable

import anyio
import anyio.abc
import attrs
from starlette.websockets import WebSocket

from echopanel.protocol import ResumeMessage, ServerMessage, Source, TranscriptEntry, encode
from echopanel.server.core import CoreConfig, ServerSession, check_token, render_markdown
from echopanel.server.core import actions as act
from echopanel.server.core import events as ev
from echopanel.server.recorder import SessionRecorder
from echopanel.server.sources import SessionSources
from echopanel.server.state import ServerState
from echopanel.server.tickets import TICKET_PARAM

__all__ = ["LiveConnection", "check_token", "render_markdown"]

log = logging.getLogger("echopanel.server")

MAX_FINALS = 50_000  # per session; beyond, finals are still sent but not kept
ANALYSIS_WINDOW = 50  # finals given to the analyzer


class _Closed(Exception):
    """The connection is over: we closed it, or the peer left."""


class LiveConnection:
    """Serves one WebSocket; create one per connection and ``await run()``."""

    def __init__(self, websocket: WebSocket, server: ServerState) -> None:
        self.ws = websocket
        self.server = server
        self.config = config = server.config
        names = [f.name for f in attrs.fields(CoreConfig) if hasattr(config, f.name)]
        rules = CoreConfig(
            **{name: getattr(config, name) for name in names},
            max_finals=MAX_FINALS,  # read here: tests may change it
            analysis_window=ANALYSIS_WINDOW,
        )
        token = secrets.token_urlsafe(32) if rules.resume_window else None
        self.core = ServerSession(
            rules, connection_id=f"srv-{uuid.uuid4().hex[:16]}", resume_token=token
        )
        self.sources = SessionSources(server, self._feed)
        self.recorder: SessionRecorder | None = None
        self._slot_key: str | None = None
        self._send_lock = anyio.Lock()
        self._closing = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake = anyio.Event()
        self._ended = anyio.Event()
        self._reader_scope: anyio.CancelScope | None = None
        #: set once the session stops using the current socket (a resume moved it on)
        self._attachment_done = anyio.Event()
        self._incoming: WebSocket | None = None
        #: this connection's socket now belongs to a resumed session: wait for it to end
        self._handed_over: anyio.Event | None = None

    # ------------------------------------------------------------------ views of the core

    @property
    def connection_id(self) -> str:
        return self.core.connection_id

    @property
    def finals(self) -> Collection[TranscriptEntry]:
        return self.core.finals

    @property
    def segment_ids(self) -> set[str]:
        return self.core.segment_ids

    # ------------------------------------------------------------------ entry point

    async def run(self) -> None:
        self.server.open_connections += 1
        self.server.connections.add(self)
        try:
            await self.ws.accept()
            self.server.metrics.connections.inc()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._guard, self._timer)
                tg.start_soon(self._guard, self._reader)
            if self._handed_over is not None:  # the resumed session uses our socket
                await self._handed_over.wait()
        except Exception:  # never let one connection hurt the server
            log.exception("connection %s failed", self.connection_id)
        finally:
            self._tg = None
            if self.core.session_id is not None:
                self.server.resumable.discard(self.core.session_id, self)
            with anyio.CancelScope(shield=True):
                await self._cleanup()
            self._attachment_done.set()
            self.server.open_connections -= 1
            self.server.connections.discard(self)
            self._ended.set()

    async def drain(self) -> None:
        """Finish this connection for a graceful shutdown; return once it has ended.

        A streaming session is told why (``status`` with ``reason: drain``), flushed into
        finals, gets its ``final_summary`` and is closed 1001; a connection without a
        session gets the status and the close at once. The flush is bounded by
        ``flush_timeout``; cancel the call (or bound it) to stop waiting.
        """
        if not self.core.closed:
            try:
                await self._feed(ev.DrainRequested())
            except _Closed:
                self._cancel()
            except Exception:
                log.exception("drain failed", extra=self.core.ids())
                self._cancel()
        await self._ended.wait()

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run one task of the connection; its end by error or close ends the connection."""
        try:
            await task()
        except _Closed:
            self._cancel()
        except Exception:
            log.exception("session task failed", extra=self.core.ids())
            with contextlib.suppress(_Closed):
                await self._feed(ev.Fault())
            self._cancel()

    def _cancel(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # ------------------------------------------------------------------ feeding the core

    async def _feed(self, event: ev.Event) -> None:
        was_closed = self.core.closed
        actions = self.core.handle(event, anyio.current_time())
        self._wake.set()  # the deadline may have moved
        for action in actions:
            await self._do(action)
        if self.core.closed and not was_closed and not any(type(a) is act.Close for a in actions):
            self._cancel()  # closed without a socket to close (a parked session expired)

    async def _reader(self) -> None:
        authorized = check_token(self.config.token, self.ws.headers) or self.server.tickets.redeem(
            self.ws.query_params.get(TICKET_PARAM)
        )  # a browser cannot set headers: it sends a ticket (echopanel.server.tickets)
        await self._feed(ev.Opened(authorized=authorized))
        if self.server.draining:  # accepted while the server began to drain
            await self._feed(ev.DrainRequested())
        await self._read_loop()

    async def _read_loop(self) -> None:
        """Read the current socket until it is lost (a parked session's reader just ends)."""
        ws = self.ws
        with anyio.CancelScope() as scope:
            self._reader_scope = scope
            while True:
                event = await self._receive(ws)
                if event is None:
                    return
                await self._feed(event)

    # ------------------------------------------------------------------ resume

    async def take_over(self, ws: WebSocket, request: ev.ResumeRequested) -> anyio.Event | None:
        """Offer this session another connection's socket (that connection got ``resume``).

        Returns the event set once this session no longer uses ``ws``, or ``None`` when the
        core refused (wrong token, not resumable, already over): ``ws`` stays the caller's.
        """
        if self._tg is None or self.core.closed:
            return None
        actions = self.core.handle(request, anyio.current_time())
        self._wake.set()
        if not any(isinstance(a, act.Attach) for a in actions):
            return None
        self._incoming = ws
        done = anyio.Event()
        try:
            for action in actions:
                if isinstance(action, act.Attach):
                    done = self._attach(action)
                else:
                    await self._do(action)
        except _Closed:
            self._cancel()
        except Exception:
            log.exception("resume failed", extra=self.core.ids())
            self._cancel()
        return done

    def _attach(self, attach: act.Attach) -> anyio.Event:
        """Move the session onto the socket offered by :meth:`take_over`."""
        assert self._incoming is not None and self._tg is not None
        old, old_closing = self.ws, self._closing
        self.ws, self._incoming, self._closing = self._incoming, None, False
        previous, self._attachment_done = self._attachment_done, anyio.Event()
        previous.set()  # a handler waiting on the previous socket may return
        if self._reader_scope is not None:
            self._reader_scope.cancel()  # a half-open socket's reader
        if not old_closing:
            self._tg.start_soon(self._drop_socket, old)
        self._tg.start_soon(self._guard, self._read_loop)
        self.server.metrics.resumes.inc()
        log.info(
            "Session resumed (%d final(s) re-sent)",
            attach.resent_finals,
            extra=self.core.ids(),
        )
        return self._attachment_done

    async def _drop_socket(self, ws: WebSocket) -> None:
        with anyio.move_on_after(self.config.send_timeout), contextlib.suppress(Exception):
            await ws.close(1001, "session resumed on another connection")

    async def _lookup(self, message: ResumeMessage) -> None:
        """This connection's first message is ``resume``: hand our socket to that session."""
        for session in self.server.resumable.candidates(message.session_id):
            if session is self:
                continue
            request = ev.ResumeRequested(
                resume_token=message.resume_token,
                last_segment_id=message.last_segment_id,
                audio_seconds=message.audio_seconds,
                connection_id=self.connection_id,
                new_token=secrets.token_urlsafe(32),
            )
            done = await session.take_over(self.ws, request)
            if done is not None:
                self._handed_over = done
                self._closing = True  # the socket is the session's now: never close it here
                self.core.handle(ev.ResumeAccepted(), anyio.current_time())
                raise _Closed  # stop reading: the session reads this socket now
        self.server.metrics.resumes_failed.inc()
        await self._feed(ev.ResumeRefused())

    async def _timer(self) -> None:
        """Sleep until the core's deadline and feed ``TimerFired``; re-plan when it moves."""
        while True:
            wake = self._wake = anyio.Event()
            deadline = self.core.deadline
            if deadline is None:
                await wake.wait()
                continue
            with anyio.move_on_after(deadline - anyio.current_time()):
                await wake.wait()
            if not wake.is_set():
                await self._feed(ev.TimerFired())

    # ------------------------------------------------------------------ running actions

    async def _do(self, action: act.Action) -> None:
        match action:
            case act.Send(message=message):
                await self._send(message)
            case act.Close(code=code, reason=reason):
                await self._close(code, reason)
                self._cancel()
            case act.FeedAudio(source=source, pcm=pcm):
                await self._feed_audio(source, pcm)
            case act.Rejected(code=code, message=message):
                self.server.metrics.rejected.labels(reason=code.value).inc()
                log.info("closing connection: %s %s", code.value, message, extra=self.core.ids())
            case act.CountDroppedFrames(source=source, frames=frames):
                self.server.metrics.frames_dropped.labels(source=source).inc(frames)
            case act.LookupSession(message=message):
                await self._lookup(message)
            case act.ResumeExpired():
                self.server.metrics.resume_expired.inc()
                log.info("Resume window passed: session released", extra=self.core.ids())
            case act.CountReplayedAudio(seconds=seconds):
                self.server.metrics.resume_audio_seconds.inc(seconds)
            case act.WaitForAsr():
                await self._wait_for_asr()
            case act.AcquireSlot():
                await self._acquire_slot()
            case act.OpenAsrStream(source=source):
                await self.sources.open(source)
            case act.SessionStarted():
                self._start_session(action)
            case act.Analyze(recent=recent):
                await self._analyze(list(recent))
            case act.EndAudio():
                self.sources.end_audio()
            case act.CancelAsr():
                self.sources.cancel()
            case act.FlushRecording():
                if self.recorder is not None:
                    await self.recorder.drain()
            case _:  # ReleaseSlot, CloseAsrStreams: done by _cleanup once every task ended
                pass

    async def _wait_for_asr(self) -> None:
        loaded = self.server.loaded_event()
        if not loaded.is_set():
            with anyio.move_on_after(self.config.slot_timeout):
                await loaded.wait()
        if self.server.asr.ready:
            await self._feed(ev.AsrReady(name=self.server.asr.name))
        else:
            reason = self.server.asr_error or "the speech model is still loading"
            await self._feed(ev.AsrUnavailable(reason=reason))

    async def _acquire_slot(self) -> None:
        self._slot_key = f"{self.connection_id}/{uuid.uuid4().hex}"
        if not await self.server.slots.acquire(self._slot_key, self.config.slot_timeout):
            await self._feed(ev.SlotRefused())
            return
        self.server.sessions.add(self)
        await self._feed(ev.SlotAcquired())

    def _start_session(self, started: act.SessionStarted) -> None:
        self.server.metrics.start_ack.observe(started.ack_seconds)
        if self.core.resumable:
            self.server.resumable.add(started.session_id, self)
        extra = {"sources": list(started.sources), "asr": self.server.asr.name}
        log.info("Session started", extra={**self.core.ids(), **extra})
        assert self._tg is not None
        self.sources.start(self._tg, self._guard)
        self._tg.start_soon(self._guard, self._analysis_loop)
        if self.config.record_dir is not None:
            self.recorder = SessionRecorder(
                self.config.record_dir, started.session_id, started.connection_id
            )
            self._tg.start_soon(self._guard, self._run_recorder)

    async def _feed_audio(self, source: Source, pcm: bytes) -> None:
        if self.recorder is not None:
            await self.recorder.write(source, pcm)
        self.server.metrics.audio_seconds.labels(source=source).inc(len(pcm) / 32000)
        await self.sources.put(source, pcm)

    async def _analyze(self, recent: list[TranscriptEntry]) -> None:
        try:
            with anyio.fail_after(self.config.analysis_timeout):
                result = await self.server.analyzer.analyze(recent)
        except Exception as exc:  # a failing analyzer never ends the session
            log.warning("analysis failed: %r", exc, extra=self.core.ids())
            return
        await self._feed(
            ev.AnalysisDone(keywords=tuple(result.keywords), topics=tuple(result.topics))
        )

    # ------------------------------------------------------------------ the session's tasks

    async def _analysis_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.analysis_interval)
            await self._feed(ev.AnalysisTick())

    async def _run_recorder(self) -> None:
        """The recorder's writer; a recording failure is a warning, never the session's end."""
        assert self.recorder is not None
        await self.recorder.run()
        await self._feed(ev.RecordingFailed(message=f"{self.recorder.error}"))

    # ------------------------------------------------------------------ socket I/O

    async def _receive(self, ws: WebSocket) -> ev.TextReceived | ev.BinaryReceived | None:
        """The next frame of ``ws``; ``None`` once the session parked or moved to another."""
        try:
            message = await ws.receive()
        except Exception:  # the socket broke: as good as a disconnect
            message = {"type": "websocket.disconnect", "code": None}
        if message["type"] == "websocket.disconnect":
            if ws is not self.ws or self.core.parked:
                return None  # a socket the session already left
            await self._lost(message.get("code"))
            return None
        text, data = message.get("text"), message.get("bytes")
        if data is not None:
            return ev.BinaryReceived(data=bytes(data))
        return ev.TextReceived(text=text if text is not None else "")

    async def _lost(self, code: int | None) -> None:
        """The current socket is gone: the core parks the session, or it ends here."""
        self._closing = True
        await self._feed(ev.PeerGone(code=code))
        if not self.core.parked:
            raise _Closed
        log.info("Connection lost (close %s): session parked", code, extra=self.core.ids())

    async def _send(self, message: ServerMessage) -> None:
        if self._closing:
            if self.core.parked:
                return  # lost while running this step's actions: kept by the core
            raise _Closed
        text = encode(message)
        ws = self.ws
        try:
            with anyio.fail_after(self.config.send_timeout):
                async with self._send_lock:
                    await ws.send_text(text)
        except Exception:
            if ws is not self.ws:
                return  # a socket the session already left
            await self._lost(None)

    async def _close(self, code: int, reason: str = "") -> None:
        if self._closing:
            return
        self._closing = True
        with anyio.move_on_after(self.config.send_timeout), contextlib.suppress(Exception):
            async with self._send_lock:
                await self.ws.close(code, reason)

    # ------------------------------------------------------------------ cleanup

    async def _cleanup(self) -> None:
        """Release everything, whatever the path (the core's release actions end here)."""
        if not self.core.closed:
            self.core.handle(ev.PeerGone(), anyio.current_time())
        with anyio.move_on_after(10):
            self.server.sessions.discard(self)
            await self.sources.aclose()
            if self._slot_key is not None:
                with contextlib.suppress(Exception):
                    await self.server.slots.release(self._slot_key)
            if self.recorder is not None:
                with contextlib.suppress(Exception):
                    await self.recorder.aclose()
            await self._close(1001, "server shutting down")
        if self.core.session_id is not None:
            log.info("Session ended", extra=self.core.ids())

    # ------------------------------------------------------------------ LiveSessionView

    def realtime_factors(self) -> Iterable[float]:
        return self.sources.realtime_factors()

    def degrade_levels(self) -> Iterable[int]:
        return self.sources.degrade_levels()
