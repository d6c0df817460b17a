"""``SourcePipeline``: one source of one session — ingest queue → ASR stream, plus load.

The reader puts frames in the :class:`~echopanel.server.ingest.IngestQueue`; :meth:`run_asr`
feeds everything queued to the shared model's ``AsrStream`` (which does its own threading)
and hands the updates to the connection; :meth:`run_metrics` reports about once per
``metrics_interval``. Both evaluate the degrade ladder on the sliding-window RTF and the
backlog, and apply the level's plan (ASR tuning, ingest budget) at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from echopanel.errors import AsrError
from echopanel.ports import AsrStream, AsrUpdate
from echopanel.protocol import Source
from echopanel.server.config import ServerConfig
from echopanel.server.degrade import DegradeLadder, LevelPlan, RtfWindow, plan_for
from echopanel.server.ingest import IngestQueue

__all__ = ["SourcePipeline"]

log = logging.getLogger("echopanel.server")


class SourcePipeline:
    """Ingest, recognition and load control of one source."""

    def __init__(
        self,
        source: Source,
        stream: AsrStream,
        config: ServerConfig,
        *,
        on_updates: Callable[[Source, list[AsrUpdate]], Awaitable[None]],
        on_level: Callable[[SourcePipeline, LevelPlan], Awaitable[None]],
        on_metrics: Callable[[SourcePipeline], Awaitable[None]],
    ) -> None:
        self.source = source
        self.stream = stream
        self.config = config
        self.queue = IngestQueue(config.ingest_budget)
        self.rtf = RtfWindow(config.degrade.window)
        self.ladder = DegradeLadder(config.degrade)
        self.plan = plan_for(0, config.degrade, config.ingest_budget)
        self.stream.tune(self.plan.tuning)
        self.last_rtf = 0.0
        self.done = anyio.Event()
        self.asr_scope = anyio.CancelScope()
        self.asr_error: str | None = None
        self.backpressure_pending = False
        self.last_backpressure = -1e9
        self.last_buffering = -1e9
        self.reported_drops = 0
        self._on_updates = on_updates
        self._on_level = on_level
        self._on_metrics = on_metrics

    # ------------------------------------------------------------------ ingest

    def put(self, pcm: bytes) -> int:
        """Queue audio (drop-oldest); returns frames dropped to make room."""
        dropped = self.queue.put(pcm)
        if dropped:
            self.backpressure_pending = True
        return dropped

    @property
    def audio_seconds(self) -> float:
        return self.queue.received_seconds

    @property
    def buffering(self) -> bool:
        """The backlog reached ``buffering_threshold`` of the current ingest budget."""
        limit = self.config.buffering_threshold * self.queue.budget
        return self.queue.backlog_seconds >= limit - 1e-9

    # ------------------------------------------------------------------ ASR task

    async def run_asr(self) -> None:
        """Feed queued audio until the queue is closed and drained, then flush."""
        with self.asr_scope:
            try:
                while True:
                    pcm = await self._audio_or_ready()
                    if pcm is None:  # a decode beside the stream has finished
                        await self._after_inference(await self.stream.poll())
                        continue
                    if not pcm:
                        break
                    updates = await self.stream.feed(pcm)
                    await self._after_inference(updates)
                updates = await self.stream.flush()
                await self._after_inference(updates)
            except AsrError as exc:
                self.asr_error = exc.message
                self.queue.close()  # nothing consumes it any more
                log.warning("ASR failed on %s: %s", self.source, exc.message)
        self.done.set()

    async def _audio_or_ready(self) -> bytes | None:
        """The next queued audio (``b""`` once closed and drained), or None as soon as the
        stream has updates of a decode that ran beside it (partials and finals are sent when
        ready, not with the next audio frame)."""
        if self.queue.backlog_seconds > 0 or self.queue.closed:
            return await self.queue.get()  # audio waits already: no need to race
        got: list[bytes] = []
        async with anyio.create_task_group() as tg:

            async def audio() -> None:
                got.append(await self.queue.get())
                tg.cancel_scope.cancel()

            async def ready() -> None:
                await self.stream.wait_ready()
                tg.cancel_scope.cancel()

            tg.start_soon(audio)
            tg.start_soon(ready)
        return got[0] if got else None

    async def _after_inference(self, updates: list[AsrUpdate]) -> None:
        now = anyio.current_time()
        self.rtf.record(now, self.stream.audio_seconds, self.stream.inference_seconds)
        if updates:
            await self._on_updates(self.source, updates)
        await self.evaluate(now)

    # ------------------------------------------------------------------ load control

    async def evaluate(self, now: float) -> None:
        """Update the RTF and the ladder; apply and announce a level change."""
        self.last_rtf = self.rtf.value(now)
        level = self.ladder.update(now, self.last_rtf, self.queue.fill)
        if level is not None:
            await self.apply_level(level)

    async def apply_level(self, level: int) -> None:
        """Switch to ``level``'s plan: retune the stream, resize the ingest budget."""
        self.ladder.level = level
        self.plan = plan_for(level, self.config.degrade, self.config.ingest_budget)
        self.stream.tune(self.plan.tuning)
        dropped = self.queue.dropped_frames
        self.queue.budget = self.plan.ingest_budget  # level 3 sheds the oldest audio now
        if self.queue.dropped_frames > dropped:
            self.backpressure_pending = True
        self.rtf.reset()
        log.info(
            "Degrade level %d on %s: %s", level, self.source, self.plan.description,
            extra={"source": self.source, "degrade_level": level},
        )  # fmt: skip
        await self._on_level(self, self.plan)

    async def run_metrics(self) -> None:
        """About every ``metrics_interval`` s: evaluate the load and report it."""
        while not self.done.is_set():
            await anyio.sleep(self.config.metrics_interval)
            await self.evaluate(anyio.current_time())
            await self._on_metrics(self)
