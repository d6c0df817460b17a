"""The decode engine's executor: one thread that runs batches of decodes on one model.

How a decode runs
-----------------
A caller (a stream's worker thread) calls :meth:`DecodeEngine.transcribe` with the audio and
faster-whisper ``transcribe`` options. The request waits in the pure
:class:`~echopanel.asr.engine.scheduler.DecodeScheduler` until the engine thread admits it
into a *round* (a batch chosen by urgency and length). The admitted caller then runs
faster-whisper's own ``transcribe`` in its own thread, on a per-request view of the model
whose CTranslate2 calls (``encode``, ``generate``, ``align``) are not executed there but
handed to the engine. The engine waits until every member of the round is blocked on a
model call (or done), takes the calls of the earliest step (encode, then generate, then
align), groups those that can run as one batch (same kind, same shapes and shared options)
and runs each group as a single CTranslate2 call, then hands each member its share of the
result. Finals that come due while a round of finals has not reached its decoder step join
it; finals that come due during a round of partials run first, between its model calls.
So a batched decode takes exactly faster-whisper's path (prompting, temperature fallback,
seek windows, word alignment and its timing heuristics); only the model calls are batched:

* ``encode``: one call per member (batching the encoder costs more per item on CPU, see
  :meth:`DecodeEngine._encode`), every member on the round's padded window
  (``Batch.frames``). faster-whisper's later windows (the audio left after the first
  window's last word) run only when a request's ``min_tail`` allows.
* ``generate``: the members' prompts and encoder outputs go in one call; ``max_length`` is the
  largest member's, and a member that could have been cut by its own smaller limit is
  re-run alone with its own limit (exact result).
* ``align``: every member's text tokens in one call, each with its own frame count.

Time is attributed honestly: each batched call's wall time is split equally among the items
in it, plus the CPU time of the member's own thread (features, tokenizer, post-processing).
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from functools import partial
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from echopanel.asr.engine.scheduler import (
    Batch,
    DecodeRequest,
    DecodeScheduler,
    SchedulerConfig,
    partial_stretch,
)
from echopanel.asr.engine.stats import EngineStats

__all__ = [
    "DecodeCancelled",
    "DecodeEngine",
    "EngineClosed",
    "engine_model_class",
    "prompt_bucket",
]

log = logging.getLogger("echopanel.asr.engine")

#: transcribe options that differ per request without changing the batched model calls.
_PER_REQUEST_OPTIONS = frozenset({"initial_prompt", "prefix", "max_new_tokens", "hotwords"})


class EngineClosed(RuntimeError):
    """The engine was closed while a decode waited."""


class DecodeCancelled(RuntimeError):
    """The requesting stream was cancelled while its decode waited."""


def _freeze(value: Any) -> Hashable:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        return (value.shape, value.tobytes())
    return value  # type: ignore[no-any-return]


def prompt_bucket(tokens: list[int], *, step: int = 16, limit: int = 48) -> list[int]:
    """The last tokens of a decoding prompt, cut to a multiple of ``step`` (at most ``limit``).

    Prompts of equal length batch together (see :func:`_call_key`); cutting the oldest few
    tokens of the context makes the streams' prompts share a handful of lengths. Prompts
    shorter than ``step`` are kept whole.
    """
    if len(tokens) < step:
        return list(tokens)
    keep = min(limit, len(tokens) // step * step)
    return list(tokens[-keep:])


def engine_model_class() -> Any:
    """faster-whisper's ``WhisperModel`` with a trimmed encoder window and engine hooks.

    ``encode_frames`` runs the encoder on that many mel frames instead of Whisper's 30 s
    (whisper.cpp's "audio_ctx"); None means 30 s. On a per-request view (see
    :meth:`DecodeEngine.transcribe`) ``encode`` hands the window to the engine.
    """
    from faster_whisper import WhisperModel

    class EngineWhisperModel(WhisperModel):  # type: ignore[misc]
        encode_frames: int | None = None
        engine_job: _Job | None = None
        #: A window after the first is decoded only when at least this many mel frames of
        #: audio are left in it (0: always, as faster-whisper does).
        min_tail_frames: int = 0
        windows: int = 0

        def encode(self, features: Any) -> Any:
            self.windows += 1
            if self.windows > 1 and _content_frames(features) < self.min_tail_frames:
                raise _TailSkipped
            if self.encode_frames is not None:
                features = features[..., : self.encode_frames]
            job = self.engine_job
            if job is None:
                return super().encode(features)
            if features.ndim == 2:
                features = features[None]
            return job.call("encode", np.ascontiguousarray(features, dtype=np.float32))

    return EngineWhisperModel


class _TailSkipped(Exception):
    """Raised inside faster-whisper's window loop: the decode ends after its windows so far."""


def _content_frames(features: Any) -> int:
    """Mel frames of audio in a window that faster-whisper padded to 30 s with zero columns.

    (A column of log-mel features is never all zero: that needs every mel band at exactly
    1e-4 of the loudest band's power.)
    """
    array = np.asarray(features)
    columns = np.flatnonzero(np.any(array.reshape(-1, array.shape[-1]) != 0, axis=0))
    return int(columns[-1]) + 1 if len(columns) else 0


@attrs.define(eq=False)
class _Call:
    """One model call of one member, waiting for the engine."""

    kind: str
    key: Hashable
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    done: threading.Event = attrs.Factory(threading.Event)
    result: Any = None
    error: BaseException | None = None


@attrs.define(eq=False)
class _Job:
    """One decode request and its member thread's state in a round."""

    engine: DecodeEngine
    request: DecodeRequest
    admitted: threading.Event = attrs.Factory(threading.Event)
    frames: int = 0
    call_pending: _Call | None = None
    finished: bool = False
    attributed: float = 0.0
    error: BaseException | None = None

    def call(self, kind: str, *args: Any, **kwargs: Any) -> Any:
        """Hand a model call to the engine and wait for its result (member thread)."""
        return self.engine._call(self, kind, args, kwargs)


class _ModelProxy:
    """Stands in for the CTranslate2 model inside a per-request view."""

    def __init__(self, job: _Job, real: Any) -> None:
        self._job = job
        self._real = real

    def generate(self, features: Any, prompts: list[list[int]], **kwargs: Any) -> Any:
        return self._job.call("generate", features, prompts, **kwargs)

    def align(
        self,
        features: Any,
        start_sequence: list[int],
        text_tokens: list[list[int]],
        num_frames: int | list[int],
        **kwargs: Any,
    ) -> Any:
        return self._job.call("align", features, start_sequence, text_tokens, num_frames, **kwargs)

    def detect_language(self, features: Any, **kwargs: Any) -> Any:
        return self._job.call("detect_language", features, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class DecodeEngine:
    """Batched decoding on one faster-whisper model for every stream of the process.

    ``model`` is an instance of :func:`engine_model_class`. One daemon thread runs the
    rounds; :meth:`transcribe` may be called from any number of threads.
    """

    def __init__(
        self,
        model: Any,
        *,
        config: SchedulerConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = model
        self._ct2 = model.model
        self._to_cpu = getattr(self._ct2, "device", "cpu") == "cuda"
        self._clock = clock
        self._sot = int(model.hf_tokenizer.token_to_id("<|startoftranscript|>"))
        self.scheduler = DecodeScheduler(config)
        self.stats = EngineStats()
        self._cond = threading.Condition()
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count(1)
        self._closed = False
        #: Members encoded per encoder call (1: see :meth:`_encode`).
        self.encode_batch = 1
        self._open_finals = 0  # final decodes submitted and not yet returned
        self._thread = threading.Thread(target=self._run, name="echopanel-decode", daemon=True)
        self._thread.start()

    @property
    def config(self) -> SchedulerConfig:
        return self.scheduler.config

    def now(self) -> float:
        return self._clock()

    def busy_fraction(self) -> float:
        """Share of the last 3 s the engine had a round in progress (0..1)."""
        with self._cond:
            return min(1.0, self.stats.busy.rate(self._clock()))

    def partial_stretch(self) -> float:
        """Factor on the streams' partial decode interval now (see :func:`partial_stretch`)."""
        return partial_stretch(self.busy_fraction())

    def open_finals(self) -> int:
        """Final decodes submitted and not yet returned (waiting or in a round)."""
        with self._cond:
            return self._open_finals

    def snapshot(self) -> dict[str, Any]:
        """Counters for /metrics (copied under the lock)."""
        with self._cond:
            s = self.stats
            return {
                "batch_size": s.batch_size.snapshot(),
                "queue_wait": s.queue_wait.snapshot(),
                "decodes_per_second": s.decodes.rate(self._clock()),
                "decodes_total": s.decodes_total,
                "finals_total": s.finals_total,
                "preemptions": s.preemptions,
                "batches_total": s.batches_total,
                "waiting": len(self.scheduler),
                "busy_fraction": min(1.0, s.busy.rate(self._clock())),
            }

    # ------------------------------------------------------------------ callers

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        *,
        stream: str,
        final: bool,
        frames: int,
        stale_since: float | None = None,
        options: Mapping[str, Any],
        min_tail: float = 0.0,
    ) -> tuple[list[Any], float]:
        """Decode ``audio`` as ``WhisperModel.transcribe(audio, **options)`` would.

        Blocks until done. Returns the segments and the seconds attributed to this decode.
        ``frames`` is the encoder window this request needs (the round may pad it).

        ``min_tail``: faster-whisper decodes the audio left after the first window's last
        word as another window; with ``min_tail`` > 0 such a window is decoded only when at
        least that many seconds of audio are left (see ``WhisperDecoder``).
        """
        group = tuple(
            sorted((k, _freeze(v)) for k, v in options.items() if k not in _PER_REQUEST_OPTIONS)
        )
        with self._cond:
            if self._closed:
                raise EngineClosed("the decode engine is closed")
            request = DecodeRequest(
                id=next(self._ids),
                stream=stream,
                final=final,
                frames=max(1, frames),
                group=group,
                submitted=self._clock(),
                stale_since=stale_since,
            )
            job = _Job(self, request)
            self._jobs[request.id] = job
            self.scheduler.submit(request)
            self._open_finals += final
            self._cond.notify_all()
        try:
            return self._decode(job, audio, options, min_tail)
        finally:
            with self._cond:
                self._open_finals -= final

    def _decode(
        self, job: _Job, audio: npt.NDArray[np.float32], options: Mapping[str, Any], min_tail: float
    ) -> tuple[list[Any], float]:
        """The member thread's part of :meth:`transcribe`: wait for a round, then decode."""
        job.admitted.wait()
        if job.error is not None:
            raise job.error
        view = copy.copy(self._model)
        view.model = _ModelProxy(job, self._ct2)
        view.encode_frames = job.frames
        view.engine_job = job
        view.min_tail_frames = round(min_tail * 100)
        view.windows = 0
        started = time.thread_time()
        out: list[Any] = []
        skipped = False
        try:
            segments, _info = view.transcribe(audio, **options)
            try:
                for segment in segments:
                    out.append(segment)
            except _TailSkipped:
                skipped = True  # the segments of the windows decoded so far are the result
        finally:
            own = time.thread_time() - started
            with self._cond:
                self.stats.tails_skipped += skipped
                job.finished = True
                self.stats.decodes_total += 1
                self.stats.decodes.add(self._clock())
                self._cond.notify_all()
        return out, job.attributed + own

    def _call(self, job: _Job, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = _Call(kind, _call_key(kind, args, kwargs, self._sot), args, kwargs)
        with self._cond:
            job.call_pending = call
            self._cond.notify_all()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def cancel_stream(self, stream: str, *, final: bool | None = None) -> int:
        """Drop the waiting decodes of ``stream`` (it went away), or with ``final`` only
        those whose ``final`` flag is that (False: its partials, a final overtook them;
        True: its early final, speech overtook it); they raise :class:`DecodeCancelled` in
        their callers. A decode already admitted to a round runs to its end. Returns how
        many were dropped."""
        dropped = 0
        with self._cond:
            for job in list(self._jobs.values()):
                if final is not None and job.request.final != final:
                    continue
                if job.request.stream == stream and self.scheduler.cancel(job.request.id):
                    del self._jobs[job.request.id]
                    job.error = DecodeCancelled(f"stream {stream} was cancelled")
                    job.admitted.set()
                    dropped += 1
        return dropped

    def close(self) -> None:
        """Stop the engine thread; waiting decodes fail with :class:`EngineClosed`."""
        with self._cond:
            self._closed = True
            for job in self._jobs.values():
                if not job.admitted.is_set():
                    job.error = EngineClosed("the decode engine is closed")
                    job.admitted.set()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ engine thread

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or len(self.scheduler) > 0)
                if self._closed:
                    return
                batch, jobs = self._admit(urgent_only=False)
                if batch is None:  # lingering: until the deadline or the next submission
                    deadline = self.scheduler.deadline
                    wait = 0.01 if deadline is None else deadline - self._clock()
                    self._cond.wait(timeout=max(0.001, wait))
                    continue
            started = time.perf_counter()
            try:
                self._round(batch, jobs, nested=False)
            except Exception:  # never lose the engine thread
                log.exception("decode engine round failed")
            elapsed = time.perf_counter() - started
            with self._cond:
                # Busy = a round in progress: its model calls and its members' own Python
                # (features, tokens, word timings), during which waiting requests wait too.
                self.stats.busy_seconds += elapsed
                self.stats.busy.add(self._clock(), elapsed)
                self.scheduler.round_done(self._clock())

    def _admit(self, *, urgent_only: bool) -> tuple[Batch | None, list[_Job]]:
        """Take the scheduler's next batch and let its members start (under the lock)."""
        now = self._clock()
        batch = self.scheduler.next_batch(now, urgent_only=urgent_only)
        if batch is None:
            return None, []
        self.stats.batches_total += 1
        return batch, self._start(batch, now)

    def _start(self, batch: Batch, now: float) -> list[_Job]:
        """Let the members of ``batch`` start their decodes (under the lock)."""
        jobs = [self._jobs.pop(i) for i in batch.ids]
        for job in jobs:
            self.stats.queue_wait.observe(now - job.request.submitted)
            self.stats.finals_total += job.request.final
            job.frames = batch.frames
            job.admitted.set()
        return jobs

    def _round(self, batch: Batch, jobs: list[_Job], *, nested: bool) -> None:
        """Run the model calls of the admitted members until every member is done.

        The members' calls run step by step, the earliest step first (encode, generate,
        align), so members that joined late catch up and share the later calls.

        * A round of partials lets finals in: between two of its steps, and between two
          members' encoder calls, finals that arrived meanwhile run as a round of their own
          (the partials just wait a little longer), so a final waits for at most one model
          call of partials, not for their whole round.
        * A round of finals takes in finals that come due before its decoder step
          (:meth:`DecodeScheduler.joiners`): they share its decoder and alignment calls.
        """
        decoded = False  # a decoder (generate) step of this round has run
        while True:
            if not nested and not batch.urgent:
                self._let_finals_in()
            elif not nested and not decoded:
                with self._cond:
                    joined = self.scheduler.joiners(batch, self._clock())
                    if joined is not None:
                        jobs = jobs + self._start(joined, self._clock())
                        batch = attrs.evolve(batch, requests=batch.requests + joined.requests)
                        self.stats.joined += len(joined.requests)
            with self._cond:
                self._cond.wait_for(partial(_all_pending, jobs))
                waiting = [j for j in jobs if not j.finished]
                if not waiting:
                    if not decoded:
                        self.stats.batch_size.observe(len(jobs))
                    return
                calls: list[tuple[_Job, _Call]] = []
                for j in waiting:
                    assert j.call_pending is not None
                    calls.append((j, j.call_pending))
                step = min(_step(c.kind) for _, c in calls)
                calls = [(j, c) for j, c in calls if _step(c.kind) == step]
                for j, _ in calls:
                    j.call_pending = None
                if not decoded and step >= _step("generate"):
                    # the batch's size is known once its decoder step starts (no more joiners)
                    self.stats.batch_size.observe(len(jobs))
            groups: dict[tuple[str, Hashable], list[tuple[_Job, _Call]]] = {}
            for job, call in calls:
                groups.setdefault((call.kind, call.key), []).append((job, call))
            for (kind, _key), members in groups.items():
                if kind == "encode" and not nested and not batch.urgent:
                    for member in members:  # one encoder call per member anyway
                        self._execute(kind, [member])
                        self._let_finals_in()
                else:
                    self._execute(kind, members)
                decoded = decoded or kind == "generate"

    def _let_finals_in(self) -> None:
        """Run the finals waiting now as a round of their own (inside a round of partials)."""
        with self._cond:
            batch, urgent = self._admit(urgent_only=True)
        if batch is not None:
            self.stats.preemptions += 1
            self._round(batch, urgent, nested=True)

    def _execute(self, kind: str, members: list[tuple[_Job, _Call]]) -> None:
        started = time.perf_counter()
        try:
            if kind == "encode":
                results = self._encode([c for _, c in members])
            elif kind == "generate":
                results = self._generate(members)
            elif kind == "align":
                results = self._align([c for _, c in members])
            else:
                results = [self._direct(c) for _, c in members]
            for (_, call), result in zip(members, results, strict=True):
                call.result = result
        except Exception as exc:
            for _, call in members:
                call.error = exc
        elapsed = time.perf_counter() - started
        share = elapsed / len(members)
        for job, call in members:
            job.attributed += share
            call.done.set()

    # ------------------------------------------------------------------ batched calls

    def _storage(self, arrays: list[npt.NDArray[np.float32]]) -> Any:
        import ctranslate2

        stacked = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(stacked))

    def _encode(self, calls: list[_Call]) -> list[Any]:
        # The encoder is one call per member (``encode_batch``): on CPU a batched encoder
        # costs more per item than one at a time for windows of 10 s and more (the
        # activations outgrow the caches: 53 vs 40 ms per 10 s window at batch 8 vs 1,
        # docs/benchmarks.md). The decoder calls, which do gain, stay batched.
        out: list[Any] = []
        step = max(1, self.encode_batch)
        for i in range(0, len(calls), step):
            chunk = calls[i : i + step]
            storage = self._storage([c.args[0] for c in chunk])
            encoded = np.array(self._ct2.encode(storage, to_cpu=self._to_cpu))
            out += [encoded[k : k + 1] for k in range(len(chunk))]
        return out

    def _generate(self, members: list[tuple[_Job, _Call]]) -> list[Any]:
        calls = [c for _, c in members]
        prompts: list[list[int]] = []
        for c in calls:
            prompts.extend(c.args[1])
        limits = [int(c.kwargs.get("max_length", 448)) for c in calls]
        kwargs = dict(calls[0].kwargs)
        kwargs["max_length"] = max(limits)
        storage = self._storage([c.args[0] for c in calls])
        results = self._ct2.generate(storage, prompts, **kwargs)
        out: list[Any] = []
        for (job, call), limit, result in zip(members, limits, results, strict=True):
            if len(calls) > 1 and limit < kwargs["max_length"]:
                # CTranslate2 stops a Whisper decode after at least (max_length - prompt) / 2
                # new tokens (measured: about max_length / 2 for short prompts). A member that
                # generated fewer than that under its own limit ended by itself and is exact;
                # otherwise the batch's larger limit may have let it run on: re-run it alone.
                longest = max(len(seq) for seq in result.sequences_ids)
                if longest >= (limit - len(call.args[1][0])) // 2 - 1:
                    started = time.perf_counter()
                    result = self._ct2.generate(
                        self._storage([call.args[0]]), call.args[1], **call.kwargs
                    )[0]
                    job.attributed += time.perf_counter() - started
            out.append([result])
        return out

    def _align(self, calls: list[_Call]) -> list[Any]:
        features: list[npt.NDArray[np.float32]] = []
        tokens: list[list[int]] = []
        frames: list[int] = []
        counts: list[int] = []
        for c in calls:
            enc, _start, text_tokens, num_frames = c.args
            n = len(text_tokens)
            counts.append(n)
            features.extend([enc] * n)
            tokens.extend(text_tokens)
            frames.extend(num_frames if isinstance(num_frames, list) else [num_frames] * n)
        if not tokens:
            return [[] for _ in calls]
        results = self._ct2.align(
            self._storage(features), calls[0].args[1], tokens, frames, **calls[0].kwargs
        )
        out: list[Any] = []
        pos = 0
        for n in counts:
            out.append(results[pos : pos + n])
            pos += n
        return out

    def _direct(self, call: _Call) -> Any:
        method = getattr(self._ct2, call.kind)
        return method(self._storage([call.args[0]]), *call.args[1:], **call.kwargs)


def _all_pending(jobs: list[_Job]) -> bool:
    """Whether every member of a round is done or waits with its next model call."""
    return all(j.finished or j.call_pending is not None for j in jobs)


_STEPS = ("encode", "detect_language", "generate", "align")


def _step(kind: str) -> int:
    """The order in which a round runs its members' pending model calls."""
    return _STEPS.index(kind) if kind in _STEPS else len(_STEPS)


def _call_key(kind: str, args: tuple[Any, ...], kwargs: dict[str, Any], sot: int) -> Hashable:
    """Calls with equal keys run as one batched call.

    CTranslate2 batches ``generate`` prompts only when <|startoftranscript|> sits at the same
    position in each (the previous-text part must have the same length), hence that position
    in the key; :func:`prompt_bucket` makes most streams' prompts the same length.
    """
    if kind == "encode":
        return tuple(args[0].shape[1:])
    if kind == "generate":
        shape = tuple(args[0].shape[1:])
        rest = tuple(sorted((k, _freeze(v)) for k, v in kwargs.items() if k != "max_length"))
        # (prompts forced to a prefix after <|startoftranscript|> are longer: length too)
        sot_at = tuple((p.index(sot) if sot in p else -1, len(p)) for p in args[1])
        return (shape, sot_at, rest)
    if kind == "align":
        return (tuple(args[0].shape[1:]), tuple(args[1]), _freeze(kwargs))
    return object()  # never batched
