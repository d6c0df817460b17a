"""``FakeAsrBackend`` / ``FakeAsrStream``: a deterministic stand-in for the Whisper backend.

The fake "hears" a fixed word sequence at a fixed pace, whatever the audio contains: word
``i`` (``words[i % len(words)]``) spans ``[i * seconds_per_word, (i + 1) * seconds_per_word)``
of each stream's audio. Every ``tuning.decode_interval`` seconds of new audio it "decodes":
words fully covered by the audio so far and not yet committed become the partial, and every
``words_per_final`` such words are committed as one final. ``flush`` commits the rest.

Load is simulated, not burnt: a decode takes ``inference_delay + inference_ratio * audio``
seconds of (async) sleep, optionally serialised through ``max_concurrency`` slots shared by
every stream of the backend, as one model instance would be. Inference seconds are measured
on the clock, so the real-time factor a server computes is the one the fake actually caused.
Every decode is logged (``decode_log``) with the tuning in force, so tests can check what a
degrade level changed. Used by the server tests, the degrade tests, the load benchmark and
``echopanel serve --asr fake``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Mapping, Sequence

import anyio
import anyio.to_thread
import attrs

from echopanel.errors import AsrError
from echopanel.ports import (
    AsrBackend,
    AsrFinalUpdate,
    AsrPartialUpdate,
    AsrStream,
    AsrTuning,
    AsrUpdate,
)
from echopanel.protocol import Source, pcm_seconds

__all__ = ["DEFAULT_WORDS", "DecodeRecord", "FakeAsrBackend", "FakeAsrStream"]

DEFAULT_WORDS: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot",
    "golf", "hotel", "india", "juliet", "kilo", "lima",
)  # fmt: skip

_MAX_LOG = 1000


@attrs.frozen(kw_only=True)
class DecodeRecord:
    """One simulated decode: the audio position it reached and the tuning it used."""

    audio_seconds: float
    beam_size: int
    final_beam_size: int
    decode_interval: float
    emitted_partial: bool


class FakeAsrStream(AsrStream):
    """Per-source state of the fake recogniser (see the module docstring)."""

    def __init__(self, backend: FakeAsrBackend, source: Source, tuning: AsrTuning) -> None:
        self.backend = backend
        self.source = source
        self.tuning = tuning
        self.decode_log: list[DecodeRecord] = []
        self.decodes = 0
        self.fed_bytes = 0
        self.closed = False
        self._samples = 0  # exact: what is heard never depends on how frames were batched
        self._inference = 0.0
        self._since_decode = 0.0
        self._committed = 0  # words committed as finals
        self._last_partial = ""

    # ------------------------------------------------------------------ AsrStream

    @property
    def audio_seconds(self) -> float:
        return self._samples / 16000

    @property
    def inference_seconds(self) -> float:
        return self._inference

    def tune(self, tuning: AsrTuning) -> None:
        self.tuning = tuning

    async def feed(self, pcm: bytes) -> list[AsrUpdate]:
        if self.closed:
            raise AsrError("stream is closed")
        if self.backend.fail_feed:
            raise AsrError("simulated inference failure")
        seconds = pcm_seconds(pcm)
        self.fed_bytes += len(pcm)
        before = self._samples
        self._samples += len(pcm) // 2
        self._since_decode += seconds
        # A decode each time the audio reaches the next multiple of the decode interval,
        # however the frames were batched into feeds.
        interval = max(1, round(self.tuning.decode_interval * 16000))
        if self._samples // interval == before // interval:
            return []
        return await self._decode(final=False)

    async def flush(self) -> list[AsrUpdate]:
        if self.closed:
            return []
        if self.backend.flush_delay:
            await anyio.sleep(self.backend.flush_delay)
        return await self._decode(final=True)

    async def aclose(self) -> None:
        self.closed = True

    # ------------------------------------------------------------------ internals

    async def _decode(self, *, final: bool) -> list[AsrUpdate]:
        backend = self.backend
        audio = self._since_decode
        self._since_decode = 0.0
        delay = backend.inference_delay + backend.inference_ratio * audio
        started = time.perf_counter()
        if backend.block_decodes:  # a hung inference: a worker thread nobody can interrupt
            backend.blocked += 1
            await anyio.to_thread.run_sync(backend.gate.wait)
        if delay > 0:
            async with backend.limiter():
                await anyio.sleep(delay)
        self._inference += time.perf_counter() - started
        self.decodes += 1
        spw = backend.seconds_per_word
        word = max(1, round(spw * 16000))  # samples per word, exact
        heard = (self._samples + (word // 2 if final else 0)) // word
        updates: list[AsrUpdate] = []
        per_final = backend.words_per_final
        while heard - self._committed >= per_final or (final and heard > self._committed):
            count = min(per_final, heard - self._committed)
            updates.append(self._final(self._committed, count))
            self._committed += count
        partial = " ".join(backend.word(i) for i in range(self._committed, heard))
        emitted = False
        if self.tuning.emit_partials and partial != self._last_partial and not final:
            t0 = self._committed * spw
            updates.append(
                AsrPartialUpdate(text=partial, t0=round(t0, 3), t1=round(max(t0, heard * spw), 3))
            )
            emitted = True
        self._last_partial = partial if not final else ""
        if len(self.decode_log) < _MAX_LOG:
            self.decode_log.append(
                DecodeRecord(
                    audio_seconds=self.audio_seconds,
                    beam_size=self.tuning.beam_size,
                    final_beam_size=self.tuning.final_beam_size,
                    decode_interval=self.tuning.decode_interval,
                    emitted_partial=emitted,
                )
            )
        return updates

    def _final(self, first: int, count: int) -> AsrFinalUpdate:
        spw = self.backend.seconds_per_word
        text = " ".join(self.backend.word(i) for i in range(first, first + count))
        t0, t1 = round(first * spw, 3), round((first + count) * spw, 3)
        digest = hashlib.sha1(f"{t0:.3f}|{t1:.3f}|{text}".encode()).hexdigest()[:16]
        confidence = 0.9 if self.tuning.final_beam_size > 1 else 0.8
        return AsrFinalUpdate(text=text, t0=t0, t1=t1, confidence=confidence, segment_id=digest)


class FakeAsrBackend(AsrBackend):
    """A deterministic :class:`~echopanel.ports.AsrBackend` for tests and load runs.

    ``load_delay`` simulates the model load/warm-up (``/health`` answers 503 meanwhile);
    ``fail_load`` makes ``load`` raise ``AsrError`` with that reason; ``fail_feed`` makes
    every ``feed`` raise. ``block_decodes`` makes every decode wait in a worker thread on
    ``gate`` (a ``threading.Event``), as a hung inference would: cancelling the task does not
    end it; :meth:`unblock` lets every blocked decode finish (``blocked`` counts them).
    ``streams`` keeps the streams opened (the last 256) for inspection.
    """

    name = "fake"

    def __init__(
        self,
        *,
        words: Sequence[str] = DEFAULT_WORDS,
        seconds_per_word: float = 0.4,
        words_per_final: int = 4,
        inference_delay: float = 0.0,
        inference_ratio: float = 0.0,
        max_concurrency: int | None = None,
        load_delay: float = 0.0,
        flush_delay: float = 0.0,
        fail_load: str | None = None,
        fail_feed: bool = False,
        block_decodes: bool = False,
    ) -> None:
        if not words or seconds_per_word <= 0 or words_per_final < 1:
            raise ValueError("need words, seconds_per_word > 0 and words_per_final >= 1")
        self.words = tuple(words)
        self.seconds_per_word = seconds_per_word
        self.words_per_final = words_per_final
        self.inference_delay = inference_delay
        self.inference_ratio = inference_ratio
        self.max_concurrency = max_concurrency
        self.load_delay = load_delay
        self.flush_delay = flush_delay
        self.fail_load = fail_load
        self.fail_feed = fail_feed
        self.block_decodes = block_decodes
        self.gate = threading.Event()
        self.blocked = 0
        self.loads = 0
        self.streams: list[FakeAsrStream] = []
        self._ready = False
        self._slots: anyio.CapacityLimiter | None = None

    def unblock(self) -> None:
        """Let every blocked decode finish, and later ones run freely."""
        self.block_decodes = False
        self.gate.set()

    def word(self, index: int) -> str:
        """The ``index``-th word the fake hears."""
        return self.words[index % len(self.words)]

    def limiter(self) -> anyio.CapacityLimiter:
        """The inference slots shared by every stream (made in the running event loop)."""
        if self._slots is None:
            self._slots = anyio.CapacityLimiter(self.max_concurrency or 1_000_000)
        return self._slots

    @property
    def ready(self) -> bool:
        return self._ready

    async def load(self) -> None:
        self.loads += 1
        if self.load_delay:
            await anyio.sleep(self.load_delay)
        if self.fail_load is not None:
            raise AsrError(self.fail_load)
        self._ready = True

    def open_stream(self, source: Source, *, tuning: AsrTuning | None = None) -> FakeAsrStream:
        if not self._ready:
            raise AsrError("model not loaded")
        stream = FakeAsrStream(self, source, tuning or AsrTuning())
        self.streams.append(stream)
        del self.streams[:-256]
        return stream

    def describe(self) -> Mapping[str, str]:
        return {
            "name": self.name,
            "seconds_per_word": f"{self.seconds_per_word:g}",
            "inference_ratio": f"{self.inference_ratio:g}",
        }

    async def aclose(self) -> None:
        self._ready = False
