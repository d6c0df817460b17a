"""``LiveConnection``: one WebSocket on ``/ws/live-listener``, from accept to close.

Lifecycle (DESIGN.md "Server session lifecycle"): accept → auth (``unauthorized``, 1008) →
``status: connected`` → wait for ``start`` (``start_timeout``, 1008) → validate
(``invalid_message`` 1007 / ``unsupported_audio_format`` 1003) → shared ASR ready
(``asr_unavailable``, 1011) → slot with a bounded wait (``server_at_capacity``, 1013) →
``status: streaming`` → one task group: the reader, per source an ASR task and a metrics
task, the analysis loop → on ``stop``: bounded flush, ``final_summary``, close 1000.

Every exit path — stop, disconnect, error, cancellation — goes through :meth:`_cleanup`,
shielded: the slot is released, streams and recorder closed, the session forgotten, and the
task group has ended every task. ``_Closed`` is the only exception used for control flow; it
never crosses a task group (each task is guarded).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn

import anyio
import anyio.abc
from starlette.websockets import WebSocket

from echopanel.errors import CLOSE_CODES, AsrError, ErrorCode, ProtocolError, default_message
from echopanel.ports import AsrFinalUpdate, AsrPartialUpdate, AsrUpdate
from echopanel.protocol import (
    HEADER_BYTES,
    MAX_FRAME_BYTES,
    SOURCES,
    AnalysisUpdate,
    AsrFinal,
    AsrPartial,
    AudioMessage,
    ErrorMessage,
    FinalSummary,
    MetricsMessage,
    ServerMessage,
    Source,
    SourceStats,
    StartMessage,
    StatusMessage,
    StopMessage,
    TranscriptEntry,
    decode_audio_frame,
    decode_client,
    encode,
)
from echopanel.server.degrade import LevelPlan
from echopanel.server.pipeline import SourcePipeline
from echopanel.server.recorder import SessionRecorder
from echopanel.server.state import ServerState
from echopanel.server.tickets import TICKET_PARAM

__all__ = ["LiveConnection", "check_token", "render_markdown"]

log = logging.getLogger("echopanel.server")

MAX_TEXT_BYTES = 2 * MAX_FRAME_BYTES  # a base64 audio message of a full frame fits
MAX_FINALS = 50_000  # per session; beyond, finals are still sent but not kept
ANALYSIS_WINDOW = 50  # finals given to the analyzer


class _Closed(Exception):
    """The connection is over: we closed it, or the peer left."""


def check_token(expected: str | None, headers: Any) -> bool:
    """Constant-time check of ``Authorization: Bearer`` or ``x-echopanel-token``."""
    if expected is None:
        return True
    want = expected.encode()
    auth = headers.get("authorization", "")
    candidates = [headers.get("x-echopanel-token", "")]
    if auth[:7].lower() == "bearer ":
        candidates.append(auth[7:].strip())
    ok = False
    for candidate in candidates:
        ok |= hmac.compare_digest(candidate.encode(), want)
    return ok


def render_markdown(transcript: Iterable[TranscriptEntry]) -> str:
    """The transcript as readable text: one ``- **[mm:ss] source:** text`` line per final."""
    lines = ["# Transcript", ""]
    for entry in transcript:
        minutes, seconds = divmod(int(entry.t0), 60)
        lines.append(f"- **[{minutes:02d}:{seconds:02d}] {entry.source}:** {entry.text}")
    return "\n".join(lines) + "\n"


def _peek_type(text: str) -> object:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return obj.get("type") if isinstance(obj, dict) else None


class LiveConnection:
    """Serves one WebSocket; create one per connection and ``await run()``."""

    def __init__(self, websocket: WebSocket, server: ServerState) -> None:
        self.ws = websocket
        self.server = server
        self.config = server.config
        self.connection_id = f"srv-{uuid.uuid4().hex[:16]}"
        self.session_id: str | None = None
        self.attempt_id: str | None = None
        self.allowed: tuple[Source, ...] = SOURCES
        self.pipelines: dict[Source, SourcePipeline] = {}
        self.finals: list[TranscriptEntry] = []
        self.segment_ids: set[str] = set()  # ids of the kept finals (<= MAX_FINALS)
        self._recent: collections.deque[TranscriptEntry] = collections.deque(maxlen=ANALYSIS_WINDOW)
        self.counts = {"finals": 0, "partials": 0, "invalid_messages": 0, "frames": 0}
        self.recorder: SessionRecorder | None = None
        self._slot_key: str | None = None
        self._send_lock = anyio.Lock()
        self._closing = False
        self._finalizing = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._analyzed = 0

    # ================================================================== entry point

    async def run(self) -> None:
        self.server.open_connections += 1
        try:
            await self.ws.accept()
            self.server.metrics.connections.inc()
            with contextlib.suppress(_Closed):
                await self._serve()
        except Exception:  # never let one connection hurt the server
            log.exception("connection %s failed", self.connection_id)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup()
            self.server.open_connections -= 1

    async def _serve(self) -> None:
        if not (
            check_token(self.config.token, self.ws.headers)
            or self.server.tickets.redeem(self.ws.query_params.get(TICKET_PARAM))
        ):  # a browser cannot set headers: it sends a ticket (echopanel.server.tickets)
            await self._fail(ErrorCode.UNAUTHORIZED)
        await self._send(
            StatusMessage(state="connected", message="send start", connection_id=self.connection_id)
        )
        start = await self._await_start()
        started_at = anyio.current_time()
        await self._begin(start)
        self.server.metrics.start_ack.observe(anyio.current_time() - started_at)
        await self._stream()

    # ================================================================== handshake

    async def _await_start(self) -> StartMessage:
        with anyio.move_on_after(self.config.start_timeout):
            while True:
                start = await self._handle_before_start(*await self._receive())
                if start is not None:
                    return start
        await self._fail(
            ErrorCode.START_TIMEOUT,
            f"No start message within {self.config.start_timeout:g} seconds",
        )

    async def _handle_before_start(
        self, text: str | None, data: bytes | None
    ) -> StartMessage | None:
        if data is not None:
            if len(data) > MAX_FRAME_BYTES:
                await self._fail(
                    ErrorCode.FRAME_TOO_LARGE, f"frame of {len(data)} bytes > {MAX_FRAME_BYTES}"
                )
            await self._invalid("audio before start")
            return None
        assert text is not None
        if len(text) > MAX_TEXT_BYTES:
            await self._fail(ErrorCode.FRAME_TOO_LARGE, f"message of {len(text)} characters")
        try:
            message = decode_client(text)
        except ProtocolError as exc:
            if exc.code is ErrorCode.UNSUPPORTED_AUDIO_FORMAT:
                await self._fail(exc.code, exc.message)
            if _peek_type(text) == "start":
                await self._fail(ErrorCode.INVALID_MESSAGE, f"invalid start: {exc.message}")
            await self._invalid(exc.message)
            return None
        if isinstance(message, StartMessage):
            return message
        kind = "audio" if isinstance(message, AudioMessage) else "stop"
        await self._invalid(f"{kind} before start")
        return None

    async def _begin(self, start: StartMessage) -> None:
        self.session_id, self.attempt_id = start.session_id, start.attempt_id
        if start.connection_id:
            self.connection_id = start.connection_id
        if start.sources is not None:
            self.allowed = start.sources
        await self._await_asr()
        self._slot_key = f"{self.connection_id}/{uuid.uuid4().hex}"
        if not await self.server.slots.acquire(self._slot_key, self.config.slot_timeout):
            await self._fail(ErrorCode.SERVER_AT_CAPACITY)
        self.server.sessions.add(self)
        if self.config.record_dir is not None:
            self.recorder = SessionRecorder(
                self.config.record_dir, start.session_id, self.connection_id
            )
        if start.sources is not None:
            try:
                for source in start.sources:
                    self._pipeline(source)
            except _AsrOpenError as exc:
                await self._fail(ErrorCode.ASR_UNAVAILABLE, exc.args[0])
        await self._send(
            StatusMessage(
                state="streaming",
                message=f"streaming ({self.server.asr.name})",
                degrade_level=0,
                **self._ids(),
            )
        )
        log.info(
            "Session started",
            extra={
                "session_id": self.session_id,
                "attempt_id": self.attempt_id,
                "connection_id": self.connection_id,
                "sources": list(self.allowed),
                "asr": self.server.asr.name,
            },
        )

    async def _await_asr(self) -> None:
        loaded = self.server.loaded_event()
        if not loaded.is_set():
            with anyio.move_on_after(self.config.slot_timeout):
                await loaded.wait()
        if not self.server.asr.ready:
            reason = self.server.asr_error or "the speech model is still loading"
            await self._fail(
                ErrorCode.ASR_UNAVAILABLE, f"Speech recognition is unavailable: {reason}"
            )

    def _pipeline(self, source: Source) -> SourcePipeline:
        pipeline = self.pipelines.get(source)
        if pipeline is None:
            try:
                stream = self.server.asr.open_stream(source)
            except AsrError as exc:
                raise _AsrOpenError(exc.message) from None
            pipeline = SourcePipeline(
                source,
                stream,
                self.config,
                on_updates=self._emit_updates,
                on_level=self._announce_level,
                on_metrics=self._send_metrics,
            )
            self.pipelines[source] = pipeline
            if self._tg is not None:
                self._start_pipeline(self._tg, pipeline)
        return pipeline

    # ================================================================== streaming

    async def _stream(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for pipeline in self.pipelines.values():
                self._start_pipeline(tg, pipeline)
            tg.start_soon(self._guard, self._analysis_loop)
            if self.recorder is not None:
                tg.start_soon(self._guard, self._run_recorder)
            tg.start_soon(self._guard, self._reader)
        self._tg = None

    def _start_pipeline(self, tg: anyio.abc.TaskGroup, pipeline: SourcePipeline) -> None:
        tg.start_soon(self._guard, functools.partial(self._run_asr, pipeline))
        tg.start_soon(self._guard, pipeline.run_metrics)

    async def _run_asr(self, pipeline: SourcePipeline) -> None:
        """A source's ASR task; a recognition failure mid-session ends the session.

        The client treats every ``error`` but ``invalid_message`` as fatal, so the server
        does too: ``asr_unavailable`` naming the source, then close 1011 (the finals sent so
        far stand). A failure while finalizing is reported in the summary's warning instead.
        """
        await pipeline.run_asr()
        if pipeline.asr_error is not None and not self._finalizing:
            await self._fail(
                ErrorCode.ASR_UNAVAILABLE,
                f"Speech recognition failed on {pipeline.source}: {pipeline.asr_error}",
            )

    async def _run_recorder(self) -> None:
        """The recorder's writer; a recording failure is a warning, never the session's end."""
        assert self.recorder is not None
        await self.recorder.run()
        await self._send(
            StatusMessage(
                state="warning",
                message=f"recording to --record-dir stopped: {self.recorder.error}",
                **self._ids(),
            )
        )

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run one task of the session; its end by error or close ends the session."""
        try:
            await task()
        except _Closed:
            self._cancel()
        except _AsrOpenError as exc:
            with contextlib.suppress(_Closed):
                await self._fail(ErrorCode.ASR_UNAVAILABLE, exc.args[0])
            self._cancel()
        except Exception:
            log.exception("session task failed", extra=self._ids())
            with contextlib.suppress(_Closed):
                await self._close(1011)
            self._cancel()

    def _cancel(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def _reader(self) -> None:
        while True:
            text, data = await self._receive()
            if self._finalizing:
                continue  # in-flight audio and a second stop are ignored
            if data is not None:
                await self._on_binary(data)
            else:
                assert text is not None
                await self._on_text(text)

    async def _on_binary(self, data: bytes) -> None:
        try:
            frame = decode_audio_frame(data)
        except ProtocolError as exc:
            if exc.code is ErrorCode.FRAME_TOO_LARGE:
                await self._fail(exc.code, exc.message)
            await self._invalid(exc.message)
            return
        await self._on_audio(frame.source, frame.pcm)

    async def _on_text(self, text: str) -> None:
        if len(text) > MAX_TEXT_BYTES:
            await self._fail(ErrorCode.FRAME_TOO_LARGE, f"message of {len(text)} characters")
        try:
            message = decode_client(text)
        except ProtocolError as exc:
            await self._invalid(exc.message)
            return
        if isinstance(message, AudioMessage):
            if len(message.pcm) + HEADER_BYTES > MAX_FRAME_BYTES:
                await self._fail(ErrorCode.FRAME_TOO_LARGE, f"audio of {len(message.pcm)} bytes")
            await self._on_audio(message.source, message.pcm)
        elif isinstance(message, StartMessage):
            await self._invalid("session already started on this connection")
        elif isinstance(message, StopMessage):
            if message.session_id != self.session_id:
                await self._invalid("stop for another session_id")
                return
            self._finalizing = True
            assert self._tg is not None
            self._tg.start_soon(self._guard, self._finalize)

    async def _on_audio(self, source: Source, pcm: bytes) -> None:
        if source not in self.allowed:
            await self._invalid(f"audio for source {source!r} not declared in start")
            return
        self.counts["frames"] += 1
        if not pcm:
            return
        pipeline = self._pipeline(source)
        if self.recorder is not None:
            await self.recorder.write(source, pcm)
        self.server.metrics.audio_seconds.labels(source=source).inc(len(pcm) / 32000)
        if pipeline.put(pcm):
            self._report_drops(pipeline)
        elif pipeline.buffering:
            await self._report_buffering(pipeline)

    async def _report_buffering(self, pipeline: SourcePipeline) -> None:
        """``status: buffering``: the backlog passed the threshold, nothing dropped yet.

        Rate-limited per source (``backpressure_interval``); drops are ``backpressure``.
        """
        now = anyio.current_time()
        if now - pipeline.last_buffering < self.config.backpressure_interval:
            return
        pipeline.last_buffering = now
        queue = pipeline.queue
        await self._send(
            StatusMessage(
                state="buffering",
                message=(
                    f"{pipeline.source}: recognition is behind, "
                    f"{queue.backlog_seconds:.1f} s of audio waiting"
                ),
                backlog_seconds=round(queue.backlog_seconds, 3),
                dropped_frames=queue.dropped_frames,
                degrade_level=pipeline.plan.level,
                **self._ids(),
            )
        )

    def _report_drops(self, pipeline: SourcePipeline) -> None:
        """Add the frames dropped since the last report to the Prometheus counter."""
        new = pipeline.queue.dropped_frames - pipeline.reported_drops
        if new > 0:
            pipeline.reported_drops += new
            self.server.metrics.frames_dropped.labels(source=pipeline.source).inc(new)

    # ================================================================== ASR output

    async def _emit_updates(self, source: Source, updates: list[AsrUpdate]) -> None:
        pipeline = self.pipelines[source]
        for update in updates:
            if isinstance(update, AsrPartialUpdate):
                if not pipeline.plan.tuning.emit_partials:
                    continue  # degrade level >= 2: finals only
                self.counts["partials"] += 1
                await self._send(
                    AsrPartial(
                        source=source,
                        text=update.text,
                        t0=round(update.t0, 3),
                        t1=round(update.t1, 3),
                        **self._ids(),
                    )
                )
            elif isinstance(update, AsrFinalUpdate):
                await self._emit_final(source, update)

    async def _emit_final(self, source: Source, update: AsrFinalUpdate) -> None:
        # unique per session: namespaced by source (once), de-duplicated by the final count
        # Only the ids of the finals kept (at most MAX_FINALS) are remembered; past the cap
        # every id carries the session-wide final index, which never repeats.
        segment_id = update.segment_id
        if not segment_id.startswith(f"{source}-"):
            segment_id = f"{source}-{segment_id}"
        index = self.counts["finals"]
        keep = index < MAX_FINALS
        if not keep or segment_id in self.segment_ids:
            segment_id = f"{segment_id}-{index}"
        self.counts["finals"] += 1
        entry = TranscriptEntry(
            source=source,
            t0=round(update.t0, 3),
            t1=round(update.t1, 3),
            text=update.text,
            confidence=update.confidence,
            segment_id=segment_id,
        )
        if keep:
            self.finals.append(entry)
            self.segment_ids.add(segment_id)
        self._recent.append(entry)
        await self._send(
            AsrFinal(
                source=source,
                text=entry.text,
                t0=entry.t0,
                t1=entry.t1,
                confidence=entry.confidence,
                segment_id=segment_id,
                **self._ids(),
            )
        )

    async def _announce_level(self, pipeline: SourcePipeline, plan: LevelPlan) -> None:
        await self._send(
            StatusMessage(
                state="overloaded" if plan.level else "warning",
                message=f"{pipeline.source}: degrade level {plan.level} ({plan.description})",
                backlog_seconds=round(pipeline.queue.backlog_seconds, 3),
                dropped_frames=pipeline.queue.dropped_frames,
                degrade_level=plan.level,
                **self._ids(),
            )
        )

    async def _send_metrics(self, pipeline: SourcePipeline) -> None:
        queue = pipeline.queue
        self._report_drops(pipeline)
        now = anyio.current_time()
        if pipeline.backpressure_pending and (
            now - pipeline.last_backpressure >= self.config.backpressure_interval
        ):
            pipeline.backpressure_pending = False
            pipeline.last_backpressure = now
            await self._send(
                StatusMessage(
                    state="backpressure",
                    message=f"{pipeline.source}: recognition is behind, oldest audio dropped",
                    backlog_seconds=round(queue.backlog_seconds, 3),
                    dropped_frames=queue.dropped_frames,
                    degrade_level=pipeline.plan.level,
                    **self._ids(),
                )
            )
        await self._send(
            MetricsMessage(
                source=pipeline.source,
                backlog_seconds=round(queue.backlog_seconds, 3),
                queue_fill=round(queue.fill, 3),
                dropped_frames=queue.dropped_frames,
                realtime_factor=round(pipeline.last_rtf, 4),
                degrade_level=pipeline.plan.level,
                active_sessions=len(self.server.sessions),
                **self._ids(),
            )
        )

    async def _analysis_loop(self) -> None:
        while True:
            await anyio.sleep(self.config.analysis_interval)
            if self._finalizing or self.counts["finals"] == self._analyzed:
                continue
            self._analyzed = self.counts["finals"]
            recent = list(self._recent)  # the newest finals, also past MAX_FINALS
            try:
                with anyio.fail_after(self.config.analysis_timeout):
                    result = await self.server.analyzer.analyze(recent)
            except Exception as exc:  # a failing analyzer never ends the session
                log.warning("analysis failed: %r", exc, extra=self._ids())
                continue
            await self._send(
                AnalysisUpdate(keywords=result.keywords, topics=result.topics, **self._ids())
            )

    # ================================================================== stop

    async def _finalize(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.queue.close()
        with anyio.move_on_after(self.config.flush_timeout) as scope:
            for pipeline in list(self.pipelines.values()):
                await pipeline.done.wait()
        if scope.cancelled_caught:
            for pipeline in self.pipelines.values():
                pipeline.asr_scope.cancel()
            await self._send(
                StatusMessage(
                    state="warning",
                    message=(
                        f"ASR flush did not finish within {self.config.flush_timeout:g} s; "
                        "the summary has what was transcribed"
                    ),
                    **self._ids(),
                )
            )
        errors = [p.asr_error for p in self.pipelines.values() if p.asr_error]
        if errors:
            await self._send(
                StatusMessage(state="warning", message=f"ASR error: {errors[0]}", **self._ids())
            )
        if self.recorder is not None:
            await self.recorder.drain()  # the recording is complete before the summary
        await self._send(self._summary())
        await self._close(1000)
        self._cancel()

    def _summary(self) -> FinalSummary:
        transcript = tuple(sorted(self.finals, key=lambda e: (e.t0, e.t1, e.source)))
        sources: dict[str, SourceStats] = {
            source: SourceStats(
                audio_seconds=round(p.audio_seconds, 3), frames_dropped=p.queue.dropped_frames
            )
            for source, p in self.pipelines.items()
        }
        counts = {
            **self.counts,
            "frames_dropped": sum(p.queue.dropped_frames for p in self.pipelines.values()),
        }
        return FinalSummary(
            transcript=transcript,
            markdown=render_markdown(transcript),
            sources=sources,
            counts=counts,
            **self._ids(),
        )

    # ================================================================== I/O helpers

    def _ids(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "attempt_id": self.attempt_id,
            "connection_id": self.connection_id,
        }

    async def _receive(self) -> tuple[str | None, bytes | None]:
        try:
            message = await self.ws.receive()
        except Exception:
            raise _Closed from None
        if message["type"] == "websocket.disconnect":
            self._closing = True
            raise _Closed
        text, data = message.get("text"), message.get("bytes")
        if data is not None:
            return None, bytes(data)
        return (text if text is not None else ""), None

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

    async def _invalid(self, message: str) -> None:
        self.counts["invalid_messages"] += 1
        if self.counts["invalid_messages"] > self.config.max_invalid_messages:
            await self._fail(
                ErrorCode.INVALID_MESSAGE,
                f"more than {self.config.max_invalid_messages} invalid messages: {message}",
                close_code=1008,
            )
        await self._send(
            ErrorMessage(code=ErrorCode.INVALID_MESSAGE, message=message, **self._ids())
        )

    async def _fail(
        self, code: ErrorCode, message: str | None = None, *, close_code: int | None = None
    ) -> NoReturn:
        """Send ``error`` then close with the code's close code; ends the connection."""
        self.server.metrics.rejected.labels(reason=code.value).inc()
        log.info("closing connection: %s %s", code.value, message or "", extra=self._ids())
        with contextlib.suppress(_Closed):
            await self._send(
                ErrorMessage(
                    code=code,
                    message=message or default_message(code),
                    **{k: v for k, v in self._ids().items() if v is not None},
                )
            )
        await self._close(close_code or CLOSE_CODES.get(code, 1011))
        raise _Closed

    # ================================================================== cleanup

    async def _cleanup(self) -> None:
        with anyio.move_on_after(10):
            self.server.sessions.discard(self)
            for pipeline in self.pipelines.values():
                pipeline.queue.close()
                with contextlib.suppress(Exception):
                    await pipeline.stream.aclose()
            if self._slot_key is not None:
                with contextlib.suppress(Exception):
                    await self.server.slots.release(self._slot_key)
            if self.recorder is not None:
                with contextlib.suppress(Exception):
                    await self.recorder.aclose()
            await self._close(1001, "server shutting down")
        if self.session_id is not None:
            log.info("Session ended", extra=self._ids())

    # ================================================================== LiveSessionView

    def realtime_factors(self) -> Iterable[float]:
        return [p.last_rtf for p in self.pipelines.values()]

    def degrade_levels(self) -> Iterable[int]:
        return [p.plan.level for p in self.pipelines.values()]


class _AsrOpenError(Exception):
    """open_stream failed (translated to ``asr_unavailable`` by the task guard)."""
