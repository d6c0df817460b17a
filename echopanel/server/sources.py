"""``SessionSources``: the recognition side of one connection's shell.

One :class:`~echopanel.server.pipeline.SourcePipeline` per source of the session, the
tasks that run them (recognition, metrics), and the events they produce for the pure core
(:class:`~echopanel.server.core.ServerSession`): a stream opened or failed, ASR output, a
source flushed or failed, a load snapshot. The connection feeds those events through the
``feed`` callable it passes in.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import anyio.abc

from echopanel.errors import AsrError
from echopanel.ports import AsrUpdate
from echopanel.protocol import Source
from echopanel.server.core import events as ev
from echopanel.server.degrade import LevelPlan
from echopanel.server.pipeline import SourcePipeline
from echopanel.server.state import ServerState

__all__ = ["SessionSources", "load_of"]

Guard = Callable[[Callable[[], Awaitable[None]]], Coroutine[Any, Any, None]]


def load_of(pipeline: SourcePipeline) -> ev.SourceLoad:
    """A snapshot of ``pipeline``'s queue and load for the core."""
    queue = pipeline.queue
    return ev.SourceLoad(
        source=pipeline.source,
        backlog_seconds=queue.backlog_seconds,
        queue_fill=queue.fill,
        dropped_frames=queue.dropped_frames,
        realtime_factor=pipeline.last_rtf,
        degrade_level=pipeline.plan.level,
    )


class SessionSources:
    """The session's pipelines; ``start`` runs their tasks (and those opened later)."""

    def __init__(self, server: ServerState, feed: Callable[[ev.Event], Awaitable[None]]) -> None:
        self.server = server
        self.pipelines: dict[Source, SourcePipeline] = {}
        self._feed = feed
        self._run: tuple[anyio.abc.TaskGroup, Guard] | None = None

    async def open(self, source: Source) -> None:
        """Open ``source``'s stream; feed ``StreamOpened`` or ``StreamFailed``."""
        try:
            stream = self.server.asr.open_stream(source)
        except AsrError as exc:
            await self._feed(ev.StreamFailed(source=source, message=exc.message))
            return
        pipeline = SourcePipeline(
            source,
            stream,
            self.server.config,
            on_updates=self._on_updates,
            on_level=self._on_level,
            on_metrics=self._on_metrics,
        )
        self.pipelines[source] = pipeline
        if self._run is not None:
            self._start(pipeline)
        await self._feed(ev.StreamOpened(source=source))

    def start(self, tg: anyio.abc.TaskGroup, guard: Guard) -> None:
        """Run every pipeline's tasks in ``tg`` (each wrapped by ``guard``), now and later."""
        self._run = (tg, guard)
        for pipeline in self.pipelines.values():
            self._start(pipeline)

    def _start(self, pipeline: SourcePipeline) -> None:
        assert self._run is not None
        tg, guard = self._run
        tg.start_soon(guard, functools.partial(self._run_asr, pipeline))
        tg.start_soon(guard, pipeline.run_metrics)

    async def put(self, source: Source, pcm: bytes) -> None:
        """Queue audio; feed ``AudioQueued`` when frames were dropped or the backlog is high."""
        pipeline = self.pipelines[source]
        dropped = pipeline.put(pcm)
        if dropped or pipeline.buffering:
            load = load_of(pipeline)
            await self._feed(
                ev.AudioQueued(load=load, dropped=dropped, buffering=pipeline.buffering)
            )

    def end_audio(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.queue.close()

    def cancel(self) -> None:
        for pipeline in self.pipelines.values():
            pipeline.asr_scope.cancel()

    async def aclose(self) -> None:
        """Close every queue and stream (idempotent; never raises)."""
        for pipeline in self.pipelines.values():
            pipeline.queue.close()
            with contextlib.suppress(Exception):
                await pipeline.stream.aclose()

    # ------------------------------------------------------------------ tasks and callbacks

    async def _run_asr(self, pipeline: SourcePipeline) -> None:
        """A source's recognition; its end (flushed, or failed) is fed to the core."""
        await pipeline.run_asr()
        if pipeline.asr_error is not None:
            await self._feed(ev.AsrFailed(source=pipeline.source, message=pipeline.asr_error))
        else:
            await self._feed(ev.AsrDone(source=pipeline.source))

    async def _on_updates(self, source: Source, updates: list[AsrUpdate]) -> None:
        partials = self.pipelines[source].plan.tuning.emit_partials
        await self._feed(ev.AsrOutput(source=source, updates=tuple(updates), partials=partials))

    async def _on_level(self, pipeline: SourcePipeline, plan: LevelPlan) -> None:
        await self._feed(ev.LevelChanged(load=load_of(pipeline), description=plan.description))

    async def _on_metrics(self, pipeline: SourcePipeline) -> None:
        active = len(self.server.sessions)
        await self._feed(ev.MetricsTick(load=load_of(pipeline), active_sessions=active))

    # ------------------------------------------------------------------ LiveSessionView

    def realtime_factors(self) -> Iterable[float]:
        return [p.last_rtf for p in self.pipelines.values()]

    def degrade_levels(self) -> Iterable[int]:
        return [p.plan.level for p in self.pipelines.values()]
