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
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable

import anyio
import anyio.abc
import attrs
from starlette.websockets import WebSocket

from echopanel.protocol import ServerMessage, Source, TranscriptEntry, encode
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
        self.core = ServerSession(rules, connection_id=f"srv-{uuid.uuid4().hex[:16]}")
        self.sources = SessionSources(server, self._feed)
        self.recorder: SessionRecorder | None = None
        self._slot_key: str | None = None
        self._send_lock = anyio.Lock()
        self._closing = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._wake = anyio.Event()
        self._ended = anyio.Event()

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
        except Exception:  # never let one connection hurt the server
            log.exception("connection %s failed", self.connection_id)
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self._cleanup()
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
        actions = self.core.handle(event, anyio.current_time())
        self._wake.set()  # the deadline may have moved
        for action in actions:
            await self._do(action)

    async def _reader(self) -> None:
        authorized = check_token(self.config.token, self.ws.headers) or self.server.tickets.redeem(
            self.ws.query_params.get(TICKET_PARAM)
        )  # a browser cannot set headers: it sends a ticket (echopanel.server.tickets)
        await self._feed(ev.Opened(authorized=authorized))
        if self.server.draining:  # accepted while the server began to drain
            await self._feed(ev.DrainRequested())
        while True:
            await self._feed(await self._receive())

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

    async def _receive(self) -> ev.TextReceived | ev.BinaryReceived:
        try:
            message = await self.ws.receive()
        except Exception:  # the socket broke: as good as a disconnect
            message = {"type": "websocket.disconnect"}
        if message["type"] == "websocket.disconnect":
            self._closing = True
            await self._feed(ev.PeerGone())
            raise _Closed
        text, data = message.get("text"), message.get("bytes")
        if data is not None:
            return ev.BinaryReceived(data=bytes(data))
        return ev.TextReceived(text=text if text is not None else "")

    async def _send(self, message: ServerMessage) -> None:
        if self._closing:
            raise _Closed
        text = encode(message)
        try:
            with anyio.fail_after(self.config.send_timeout):
                async with self._send_lock:
                    await self.ws.send_text(text)
        except Exception:
            self._closing = True
            raise _Closed from None

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
