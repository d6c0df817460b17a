"""Benchmark of the streaming Whisper backend (issue 4).

Streams audio through ``WhisperBackend`` in 40 ms chunks (``--chunk-ms``) at real-time pace
(wall clock: each chunk is fed when its audio would have been captured) and reports, per
input:

* WER of the streamed finals and of the same model transcribing the whole file offline
  (faster-whisper defaults: beam 5, no VAD) against the reference text;
* speech onset -> first partial (or final) and end of utterance -> final, in wall seconds
  (utterances from Silero VAD on the whole file, >= 0.5 s silence between them);
* real-time factor (model time / audio time), RSS and latency per block of audio (flatness);
* with ``--concurrency``, how many real-time sources one machine sustains (lag < 1 s).

Usage (from the repo root)::

    python benchmarks/bench_asr.py --jfk ../shared/data/jfk.flac --long-minutes 10 \\
        --concurrency 1,2,3,4 --concurrency-seconds 60

The long-form speech is generated with espeak-ng (seeded sentences, 0.6-1.2 s pauses).
``--pace fast`` feeds without sleeping (latencies then mean compute latency only).

Natural speech (issue 8; ``benchmarks/natural.py``)::

    # deterministic replay (text independent of CPU load), both pause conditions
    python benchmarks/bench_asr.py --natural ../shared/data/speech --pace fast
    # real time through a running `echopanel serve`, 4 sessions at once
    python benchmarks/bench_asr.py --natural ../shared/data/speech \
        --server-url ws://127.0.0.1:8765 --natural-concurrency 4

The 41 recordings are shuffled (``--seed``) and joined into ~120 s sessions with 0.4-1.5 s
("pauses") or 0.1-0.3 s ("no-pause") of silence between utterances; offline is the same
model on each whole session (beam 5). Reported: corpus WER with substitutions, deletions,
insertions; invented phrases and back-to-back repeated 3+-word sequences absent from the
reference; onset -> first partial and end of utterance -> final; RTF.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import jiwer
import numpy as np
import soundfile as sf
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.natural import (
    Session,
    build_sessions,
    invented_phrases,
    repeated_sequences,
    score,
)
from echopanel.asr.policy import PolicyConfig
from echopanel.asr.whisper import FINAL_MIN_WINDOW, PARTIAL_MIN_WINDOW, WhisperBackend
from echopanel.ports import AsrFinalUpdate, AsrPartialUpdate, AsrTuning
from echopanel.server.config import DegradeConfig
from echopanel.server.degrade import plan_for

__all__ = ["main"]

SR = 16000
CHUNK = 640  # 40 ms, the client's frames (--chunk-ms)

_NORM = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),  # type: ignore[no-untyped-call]
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)
JFK_TEXT = (
    "And so my fellow Americans ask not what your country can do for you "
    "ask what you can do for your country"
)

_SUBJECTS = [
    "the team",
    "our manager",
    "the new client",
    "my colleague",
    "the design group",
    "the support desk",
    "the sales lead",
    "everyone on the call",
    "the engineers",
]
_VERBS = [
    "reviewed",
    "discussed",
    "approved",
    "rejected",
    "postponed",
    "summarized",
    "questioned",
    "finished",
    "started",
    "planned",
]
_OBJECTS = [
    "the budget for next quarter",
    "the release schedule",
    "the customer feedback",
    "the hiring plan",
    "the marketing campaign",
    "the security audit",
    "the office move",
    "the product roadmap",
    "the weekly report",
    "the travel policy",
]
_TAILS = [
    "before lunch",
    "after a long debate",
    "without any changes",
    "on Tuesday morning",
    "with a few open questions",
    "in the shared document",
    "at the end of the meeting",
    "during the video call",
]


def wer(ref: str, hyp: str) -> float:
    return float(jiwer.wer(ref, hyp, reference_transform=_NORM, hypothesis_transform=_NORM))


def load(path: Path) -> np.ndarray:
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != SR:
        audio = soxr.resample(audio, sr, SR)
    return np.asarray(audio, dtype=np.float32)


def make_long_form(minutes: float, workdir: Path, seed: int = 4) -> tuple[np.ndarray, str]:
    """espeak-ng speech of seeded sentences with pauses, ``minutes`` long; and its text."""
    rng = random.Random(seed)
    parts: list[np.ndarray] = []
    texts: list[str] = []
    total = 0
    while total < minutes * 60 * SR:
        sentence = (
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_TAILS)}."
        )
        wav = workdir / "s.wav"
        subprocess.run(
            [
                "espeak-ng",
                "-v",
                "en-us",
                "-s",
                str(rng.choice([140, 155, 170])),
                "-w",
                str(wav),
                sentence,
            ],
            check=True,
        )
        parts += [load(wav), np.zeros(int(rng.uniform(0.6, 1.2) * SR), dtype=np.float32)]
        texts.append(sentence)
        total += len(parts[-2]) + len(parts[-1])
    return np.concatenate(parts), " ".join(texts)


def utterances(audio: np.ndarray) -> list[tuple[float, float]]:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    spans = get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=500, speech_pad_ms=0))
    return [(s["start"] / SR, s["end"] / SR) for s in spans]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


async def stream_one(
    backend: WhisperBackend,
    audio: np.ndarray,
    source: Any,
    pace: str,
    log: list[Any],
    tuning: AsrTuning | None = None,
) -> dict[str, Any]:
    """Stream ``audio``; log (wall offset, update) and per-chunk lag."""
    s = backend.open_stream(source, tuning=tuning)
    s.stretch = pace != "fast"  # as fast as possible: the level-0 cadence (see replay)
    # As fast as possible, decodes beside the stream would be overtaken by the audio:
    # inline, every partial decode of the level-0 cadence runs (see replay).
    s.background = pace != "fast"
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    start = time.perf_counter()
    lags: list[float] = []
    rss: list[tuple[float, float]] = []
    for i in range(0, len(pcm), CHUNK * 2):
        audio_t = (i // 2 + CHUNK) / SR  # audio time when this chunk is complete
        if pace == "realtime":
            delay = start + audio_t - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
        updates = await s.feed(pcm[i : i + CHUNK * 2])
        now = time.perf_counter() - start
        if pace == "fast":
            now = audio_t + (s.inference_seconds - sum(lags))  # simulated clock
        lags.append(max(0.0, now - audio_t) if pace == "realtime" else 0.0)
        log += [(now, u) for u in updates]
        if i % (SR * 2 * 30) == 0:
            rss.append((audio_t, rss_mb()))
    updates = await s.flush()
    log += [(time.perf_counter() - start, u) for u in updates]
    return {"stream": s, "lags": lags, "rss": rss}


def latencies(
    log: list[Any], spans: list[tuple[float, float]], offset: float = 0.0
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(utterance time, onset->first partial) and (utterance time, end->final) pairs."""
    onset: list[tuple[float, float]] = []
    ending: list[tuple[float, float]] = []
    for t0, t1 in spans:
        first = next((w for w, u in log if u.t1 > t0 + 0.05 and w >= t0), None)
        if first is not None:
            onset.append((t0, first - t0))
        fin = next(
            (
                w
                for w, u in log
                if isinstance(u, AsrFinalUpdate) and u.t1 >= t1 - 0.6 and u.t0 < t1 and w >= t1
            ),
            None,
        )
        if fin is not None:
            ending.append((t1, fin - t1))
    return onset, ending


async def bench_file(
    backend: WhisperBackend, name: str, audio: np.ndarray, ref: str, pace: str
) -> dict[str, Any]:
    audio = np.concatenate([audio, np.zeros(SR, dtype=np.float32)])
    log: list[Any] = []
    res = await stream_one(backend, audio, "system", pace, log)
    s = res["stream"]
    streamed = " ".join(u.text for _, u in log if isinstance(u, AsrFinalUpdate))
    model = backend._shared.model  # type: ignore[union-attr]
    model.encode_frames = None
    segs, _ = model.transcribe(audio, language="en")
    offline = " ".join(seg.text.strip() for seg in segs)
    spans = utterances(audio)
    onset, ending = latencies(log, spans)
    blocks: dict[int, list[float]] = {}
    for t, v in ending:
        blocks.setdefault(int(t // 120), []).append(v)
    out = {
        "name": name,
        "audio_s": round(s.audio_seconds, 1),
        "utterances": len(spans),
        "wer_streamed": round(wer(ref, streamed), 4),
        "wer_offline": round(wer(ref, offline), 4),
        "onset_to_partial_p50": round(pct([v for _, v in onset], 50), 3),
        "onset_to_partial_p90": round(pct([v for _, v in onset], 90), 3),
        "end_to_final_p50": round(pct([v for _, v in ending], 50), 3),
        "end_to_final_p90": round(pct([v for _, v in ending], 90), 3),
        "rtf": round(s.inference_seconds / s.audio_seconds, 3),
        "max_lag_s": round(max(res["lags"]), 3),
        "decodes": s.policy.decodes,
        "partials": sum(isinstance(u, AsrPartialUpdate) for _, u in log),
        "finals": sum(isinstance(u, AsrFinalUpdate) for _, u in log),
        "rss_mb_by_30s": [round(v) for _, v in res["rss"]],
        "end_to_final_p50_per_2min": [
            round(statistics.median(v), 3) for _, v in sorted(blocks.items())
        ],
    }
    return out


async def bench_concurrency(
    backend: WhisperBackend, audio: np.ndarray, n: int, seconds: float, level: int = 0
) -> dict[str, Any]:
    clip = audio[: int(seconds * SR)]
    tuning = plan_for(level, DegradeConfig(), 2.0).tuning  # as the server's ladder tunes
    logs: list[list[Any]] = [[] for _ in range(n)]
    results: list[dict[str, Any]] = [{} for _ in range(n)]

    async def one(i: int) -> None:
        shifted = np.roll(clip, int(i * 3.3 * SR))  # different speech on each source
        results[i] = await stream_one(backend, shifted, "mic", "realtime", logs[i], tuning)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    ending: list[float] = []
    for i in range(n):
        spans = utterances(np.roll(clip, int(i * 3.3 * SR)))
        ending += [v for _, v in latencies(logs[i], spans)[1]]
    max_lag = max(max(r["lags"]) for r in results)
    return {
        "sources": n,
        "degrade_level": level,
        "max_lag_s": round(max_lag, 2),
        "end_to_final_p50": round(pct(ending, 50), 3),
        "end_to_final_p90": round(pct(ending, 90), 3),
        "sustained": max_lag < 1.0,
    }


def offline_text(backend: WhisperBackend, audio: np.ndarray, cache: Path | None) -> str:
    """The same model on the whole file, faster-whisper defaults (beam 5, no VAD)."""
    import hashlib
    import json

    key = hashlib.sha1(audio.tobytes()).hexdigest()[:16]
    store: dict[str, str] = {}
    if cache is not None and cache.exists():
        store = json.loads(cache.read_text())
        if key in store:
            return store[key]
    shared = backend._shared
    assert shared is not None
    with shared.lock:
        shared.model.encode_frames = None
        segs, _ = shared.model.transcribe(audio, language="en", beam_size=5)
        text = " ".join(seg.text.strip() for seg in segs)
    if cache is not None:
        store[key] = text
        cache.write_text(json.dumps(store, indent=1))
    return text


async def replay(
    backend: WhisperBackend, audio: np.ndarray, source: Any, tuning: AsrTuning | None
) -> dict[str, Any]:
    """Feed ``--chunk-ms`` chunks as the server's pipeline does when it keeps up, without
    sleeping.

    The text is deterministic (the policy only counts samples; the partial-cadence stretch,
    which reads the engine's busy time, is off: an idle server keeps level-0 cadence; the
    decodes, early finals included, run inline in ``feed``, as if every decode beside a live
    stream ended at once).
    Latencies use a simulated clock: a chunk is fed when its audio is complete or when the
    previous feed returned, whichever is later, and a feed takes the model time it measured.
    """
    s = backend.open_stream(source, tuning=tuning)
    s.stretch = False
    s.background = False
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    clock = 0.0
    log: list[Any] = []
    for i in range(0, len(pcm), CHUNK * 2):
        audio_t = (i // 2 + CHUNK) / SR
        before = s.inference_seconds
        updates = await s.feed(pcm[i : i + CHUNK * 2])
        clock = max(clock, audio_t) + (s.inference_seconds - before)
        log += [(clock, u) for u in updates]
    before = s.inference_seconds
    updates = await s.flush()
    clock = max(clock, len(audio) / SR) + (s.inference_seconds - before)
    log += [(clock, u) for u in updates]
    return {"stream": s, "log": log, "lags": [0.0], "rss": []}


def _session_row(sess: Session, res: dict[str, Any], offline: str) -> dict[str, Any]:
    log = res["log"]
    s = res["stream"]
    finals = [u for _, u in log if isinstance(u, AsrFinalUpdate)]
    streamed = " ".join(u.text for u in finals)
    onset, ending = latencies(log, sess.spans)
    return {
        "session": sess.name,
        "audio_s": round(sess.seconds, 1),
        "streamed": score([sess.ref], [streamed]),
        "offline": score([sess.ref], [offline]),
        "invented": invented_phrases(sess.ref, streamed),
        "repeats": repeated_sequences(sess.ref, streamed),
        "offline_invented": invented_phrases(sess.ref, offline),
        "offline_repeats": repeated_sequences(sess.ref, offline),
        "onset": [v for _, v in onset],
        "ending": [v for _, v in ending],
        "rtf": s.inference_seconds / s.audio_seconds,
        "max_lag_s": max(res["lags"]) if res["lags"] else 0.0,
        "text": streamed,
        "offline_text": offline,
        "finals": [(u.t0, u.t1, u.text) for u in finals],
    }


def _summary(label: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    def tot(kind: str) -> dict[str, Any]:
        parts = {k: sum(r[kind][k] for r in rows) for k in ("sub", "del", "ins", "words")}
        errors = parts["sub"] + parts["del"] + parts["ins"]
        return {"wer": round(errors / parts["words"] * 100, 2), **parts}

    onset = [v for r in rows for v in r["onset"]]
    ending = [v for r in rows for v in r["ending"]]
    return {
        "condition": label,
        "sessions": len(rows),
        "audio_s": round(sum(r["audio_s"] for r in rows), 1),
        "streamed": tot("streamed"),
        "offline": tot("offline"),
        "invented": sum(len(r["invented"]) for r in rows),
        "repeats": sum(len(r["repeats"]) for r in rows),
        "offline_invented": sum(len(r["offline_invented"]) for r in rows),
        "offline_repeats": sum(len(r["offline_repeats"]) for r in rows),
        "onset_to_partial_p50": round(pct(onset, 50), 3),
        "onset_to_partial_p90": round(pct(onset, 90), 3),
        "end_to_final_p50": round(pct(ending, 50), 3),
        "end_to_final_p90": round(pct(ending, 90), 3),
        "rtf_mean": round(statistics.mean(r["rtf"] for r in rows), 3),
        "max_lag_s": round(max(r["max_lag_s"] for r in rows), 2),
        "max_degrade_level": max(r.get("max_degrade_level", 0) for r in rows),
    }


async def listen_session(url: str, wav: Path) -> dict[str, Any]:
    """Stream ``wav`` at real-time pace through ``echopanel listen --json`` to a running
    ``echopanel serve``; the partials and finals with the wall time they arrived, in
    seconds since the session reported ``streaming`` (when the file starts being sent)."""
    import json

    cmd = [sys.executable, "-m", "echopanel", "listen", "--json", "--no-bundle"]
    cmd += ["--url", url, "--source", f"file:{wav}"]
    log: list[Any] = []
    rtfs: list[float] = []
    levels: list[int] = []
    start: float | None = None
    async with await anyio.open_process(cmd) as proc:
        assert proc.stdout is not None
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                now = time.perf_counter()
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                kind = str(rec.get("event", ""))
                if start is None and kind == "state" and rec.get("state") == "listening":
                    start = now
                if kind == "metrics":
                    rtfs.append(float(rec.get("realtime_factor", 0.0)))
                    levels.append(int(rec.get("degrade_level", 0)))
                if {"text", "t0", "t1"} <= rec.keys() and "summary" not in kind:
                    final = "segment_id" in rec
                    cls = AsrFinalUpdate if final else AsrPartialUpdate
                    u = cls(
                        text=rec["text"],
                        t0=float(rec["t0"]),
                        t1=float(rec["t1"]),
                        **(
                            {"confidence": 1.0, "segment_id": str(rec.get("segment_id", "x"))}
                            if final
                            else {}
                        ),
                    )
                    log.append((now - (start if start is not None else now), u))
        await proc.wait()
    return {"log": log, "rtfs": rtfs, "levels": levels}


class _ListenedStream:
    """What ``_session_row`` reads from a stream, for a session run through the server
    (the RTF is the mean of the server's ``metrics`` events)."""

    def __init__(self, seconds: float, rtf: float) -> None:
        self.audio_seconds = seconds
        self.inference_seconds = rtf * seconds


async def _natural_one(
    how: str,
    backend: WhisperBackend,
    sess: Session,
    offline: str,
    tuning: AsrTuning,
    rows: list[dict[str, Any]],
    i: int,
) -> None:
    """One session: ``replay`` (fast, deterministic) or ``realtime`` (wall clock)."""
    if how == "replay":
        res = await replay(backend, sess.audio, "mic", tuning)
    else:
        log: list[Any] = []
        res = await stream_one(backend, sess.audio, "mic", "realtime", log, tuning)
        res["log"] = log
    rows[i] = _session_row(sess, res, offline)


async def _listen_one(
    url: str, sess: Session, wav: Path, offline: str, rows: list[dict[str, Any]], i: int
) -> None:
    res = await listen_session(url, wav)
    rtf = statistics.mean(res["rtfs"]) if res["rtfs"] else float("nan")
    res["stream"] = _ListenedStream(sess.seconds, rtf)
    res["lags"] = [0.0]
    rows[i] = _session_row(sess, res, offline)
    rows[i]["max_degrade_level"] = max(res["levels"], default=0)


async def bench_natural(backend: WhisperBackend, args: argparse.Namespace) -> None:
    """Streamed vs offline on joined natural-speech sessions (``--natural DIR``)."""
    import json

    root = Path(args.natural)
    cache = Path(args.offline_cache) if args.offline_cache else None
    tuning = plan_for(args.degrade_level, DegradeConfig(), 2.0).tuning
    conditions = {"pauses": (0.4, 1.5), "no-pause": (0.1, 0.3)}
    dump: dict[str, Any] = {}
    how = "server" if args.server_url else ("replay" if args.pace == "fast" else "realtime")
    n = 1 if how == "replay" else args.natural_concurrency
    for label in args.conditions.split(","):
        sessions = build_sessions(
            root, pause=conditions[label], seed=args.seed, session_seconds=args.session_seconds
        )
        if args.sessions:
            sessions = sessions[: args.sessions]
        if args.session_names:
            sessions = [x for x in sessions if x.name in args.session_names.split(",")]
        offline = [offline_text(backend, sess.audio, cache) for sess in sessions]
        rows: list[dict[str, Any]] = [{} for _ in sessions]
        with tempfile.TemporaryDirectory() as tmp:
            wavs = [Path(tmp) / f"{label}-{sess.name}.wav" for sess in sessions]
            if how == "server":
                for sess, wav in zip(sessions, wavs, strict=True):
                    sf.write(wav, sess.audio, SR, subtype="PCM_16")
            for first in range(0, len(sessions), n):
                async with anyio.create_task_group() as tg:
                    for i in range(first, min(first + n, len(sessions))):
                        if how == "server":
                            tg.start_soon(
                                _listen_one, args.server_url, sessions[i], wavs[i],
                                offline[i], rows, i,
                            )  # fmt: skip
                        else:
                            tg.start_soon(
                                _natural_one, how, backend, sessions[i], offline[i], tuning,
                                rows, i,
                            )  # fmt: skip
        summary = _summary(f"{label} x{n} {how} level{args.degrade_level}", rows)
        print(json.dumps(summary), flush=True)
        dump[label] = {"summary": summary, "sessions": rows}
        if args.dump:
            await anyio.Path(args.dump).write_text(json.dumps(dump, indent=1))


async def run(args: argparse.Namespace) -> None:
    overrides = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.policy)}
    backend = WhisperBackend(
        cpu_threads=args.threads,
        config=PolicyConfig(**overrides),
        min_window=args.encoder_min_window,
        partial_min_window=args.partial_min_window,
    )
    t = time.perf_counter()
    await backend.load()
    print(f"# load+warm-up {time.perf_counter() - t:.2f} s; {dict(backend.describe())}")
    print(f"# machine: {os.cpu_count()} CPUs; pace={args.pace}")
    if args.natural:
        await bench_natural(backend, args)
        await backend.aclose()
        return
    print(await bench_file(backend, "jfk", load(Path(args.jfk)), JFK_TEXT, args.pace))
    with tempfile.TemporaryDirectory() as tmp:
        long_audio, long_text = make_long_form(args.long_minutes, Path(tmp))
    if args.long_minutes > 0:
        print(await bench_file(backend, "long-form", long_audio, long_text, args.pace))
    for n in [int(x) for x in args.concurrency.split(",") if x]:
        print(
            await bench_concurrency(
                backend, long_audio, n, args.concurrency_seconds, args.degrade_level
            )
        )
    await backend.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jfk", default="../shared/data/jfk.flac")
    p.add_argument("--long-minutes", type=float, default=10.0)
    p.add_argument("--concurrency", default="1,2,3,4")
    p.add_argument("--concurrency-seconds", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--pace", choices=["realtime", "fast"], default="realtime")
    p.add_argument(
        "--degrade-level",
        type=int,
        default=0,
        help="tune the concurrent sources as the server's degrade ladder does at this level",
    )
    p.add_argument(
        "--natural",
        default="",
        help="natural-speech mode over this directory (e.g. ../shared/data/speech)",
    )
    p.add_argument("--conditions", default="pauses,no-pause")
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--session-seconds", type=float, default=120.0)
    p.add_argument(
        "--encoder-min-window",
        type=float,
        default=FINAL_MIN_WINDOW,
        help="shortest encoder window of final decodes in seconds (WhisperBackend min_window)",
    )
    p.add_argument(
        "--partial-min-window",
        type=float,
        default=PARTIAL_MIN_WINDOW,
        help="shortest encoder window of partial decodes (WhisperBackend partial_min_window)",
    )
    p.add_argument("--sessions", type=int, default=0, help="only the first N sessions")
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a PolicyConfig float field (tuning experiments), e.g. vad_threshold=0.2",
    )
    p.add_argument("--session-names", default="", help="only these sessions (s0,s3)")
    p.add_argument("--natural-concurrency", type=int, default=1)
    p.add_argument(
        "--chunk-ms",
        type=int,
        default=40,
        help="audio fed per call in replays (40: the client's frames)",
    )
    p.add_argument("--offline-cache", default="", help="JSON file caching offline texts")
    p.add_argument("--dump", default="", help="write per-session texts and finals here")
    p.add_argument(
        "--server-url",
        default="",
        help="with --natural: stream through a running `echopanel serve` at this ws:// URL",
    )
    args = p.parse_args()
    global CHUNK
    CHUNK = SR * args.chunk_ms // 1000
    anyio.run(run, args)


if __name__ == "__main__":
    main()
