"""Natural-speech sessions and scoring for ``bench_asr.py --natural`` (issue 8).

Sessions join the utterances of ``../shared/data/speech`` (LibriSpeech + spontaneous MFA
recordings, see its README) with seeded pauses; the offline baseline is the same model on
the whole joined file (faster-whisper, beam 5). Scoring lower-cases and drops punctuation.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import soundfile as sf

__all__ = [
    "HALLUCINATIONS",
    "Session",
    "build_sessions",
    "invented_phrases",
    "load_manifest",
    "normalize",
    "repeated_sequences",
    "score",
]

SR = 16000

#: Phrases Whisper invents on pauses and silence (normalized).
HALLUCINATIONS = (
    "thank you",
    "thanks for watching",
    "thank you for watching",
    "thanks for listening",
    "please subscribe",
    "see you in the next",
    "bye bye",
    "subtitles by",
    "i'll see you",
)


def normalize(text: str) -> str:
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[^\w' ]+", " ", text)
    return " ".join(w.strip("'") for w in text.split() if w.strip("'"))


def load_manifest(root: Path) -> list[tuple[str, float, str]]:
    rows = []
    for line in (root / "manifest.tsv").read_text().splitlines()[1:]:
        if line.strip():
            f, sec, ref = line.split("\t")[:3]
            rows.append((f, float(sec), ref))
    return rows


def speech_bounds(audio: np.ndarray) -> tuple[float, float]:
    """Start and end (seconds) of the speech in one recording.

    LibriSpeech files begin with ~0.5 s of silence (median 0.54 s over the 41 recordings),
    so latencies are measured from the speech itself: Silero VAD at its standard threshold
    (0.5, no padding; faster-whisper's, independent of the policy's own 0.3 gate). A frame
    energy 20 dB above the file's noise floor agrees within 0.1 s on these files.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    ts = get_speech_timestamps(audio, VadOptions(speech_pad_ms=0, min_silence_duration_ms=500))
    if not ts:
        return 0.0, len(audio) / SR
    return ts[0]["start"] / SR, ts[-1]["end"] / SR


class Session:
    """Joined audio, its reference and the utterance spans (seconds of speech: from the
    onset to the end of the speech of each recording, see :func:`speech_bounds`)."""

    def __init__(self, name: str, audio: np.ndarray, ref: str, spans: list[tuple[float, float]]):
        self.name = name
        self.audio = audio
        self.ref = ref
        self.spans = spans

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR


def _load(path: Path) -> np.ndarray:
    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    assert sr == SR, path
    return np.asarray(audio.mean(axis=1), dtype=np.float32)


def build_sessions(
    root: Path,
    *,
    pause: tuple[float, float],
    seed: int = 8,
    session_seconds: float = 120.0,
    limit_seconds: float | None = None,
) -> list[Session]:
    """Shuffle the recordings (seeded) and join them into sessions of about
    ``session_seconds`` with ``pause`` (min, max) seconds of silence between utterances."""
    rows = load_manifest(root)
    rng = random.Random(seed)
    rng.shuffle(rows)
    sessions: list[Session] = []
    parts: list[np.ndarray] = [np.zeros(int(0.5 * SR), dtype=np.float32)]
    refs: list[str] = []
    spans: list[tuple[float, float]] = []
    pos = len(parts[0])
    total = 0.0

    def close() -> None:
        nonlocal parts, refs, spans, pos
        parts.append(np.zeros(SR, dtype=np.float32))
        name = f"s{len(sessions)}"
        sessions.append(Session(name, np.concatenate(parts), " ".join(refs), spans))
        parts, refs, spans = [np.zeros(int(0.5 * SR), dtype=np.float32)], [], []
        pos = len(parts[0])

    for f, _sec, ref in rows:
        audio = _load(root / f)
        if limit_seconds is not None and total + len(audio) / SR > limit_seconds:
            continue
        total += len(audio) / SR
        if refs:
            gap = np.zeros(int(rng.uniform(*pause) * SR), dtype=np.float32)
            parts.append(gap)
            pos += len(gap)
        on, off = speech_bounds(audio)
        spans.append((pos / SR + on, pos / SR + off))
        parts.append(audio)
        pos += len(audio)
        refs.append(ref)
        if pos / SR >= session_seconds:
            close()
    if refs:
        close()
    return sessions


def invented_phrases(ref: str, hyp: str) -> list[str]:
    """Hallucination-list phrases found in ``hyp`` more often than in ``ref``."""
    r, h = f" {normalize(ref)} ", f" {normalize(hyp)} "
    out = []
    for phrase in HALLUCINATIONS:
        extra = h.count(f" {phrase} ") - r.count(f" {phrase} ")
        out += [phrase] * max(0, extra)
    return out


def repeated_sequences(ref: str, hyp: str, min_words: int = 3) -> list[str]:
    """Word sequences (≥ ``min_words``) repeated back to back in ``hyp`` but not in ``ref``."""
    words = normalize(hyp).split()
    r = f" {normalize(ref)} "
    out = []
    for n in range(min_words, 13):
        for i in range(len(words) - 2 * n + 1):
            a, b = words[i : i + n], words[i + n : i + 2 * n]
            if a == b and f" {' '.join(a + b)} " not in r:
                out.append(" ".join(a))
    return out


def score(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, Any]:
    """Corpus WER (errors / reference words) with its parts, over pairs of texts."""
    out = jiwer.process_words([normalize(r) for r in refs], [normalize(h) for h in hyps])
    n = out.hits + out.substitutions + out.deletions
    return {
        "wer": round((out.substitutions + out.deletions + out.insertions) / n * 100, 2),
        "sub": out.substitutions,
        "del": out.deletions,
        "ins": out.insertions,
        "words": n,
    }
