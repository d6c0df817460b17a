"""Streaming speech recognition.

The pure, model-agnostic streaming policy is exported here. The faster-whisper backend is
imported lazily as ``echopanel.asr.whisper`` (it loads CTranslate2 and onnxruntime) and the
Silero VAD adapter as ``echopanel.asr.vad``.
"""

from __future__ import annotations

from echopanel.asr.policy import (
    HALLUCINATION_BLOCKLIST,
    SAMPLE_RATE,
    DecodedSegment,
    Decoder,
    PolicyConfig,
    StreamingPolicy,
    Vad,
    Word,
    break_repetitions,
    normalize_word,
)

__all__ = [
    "HALLUCINATION_BLOCKLIST",
    "SAMPLE_RATE",
    "DecodedSegment",
    "Decoder",
    "PolicyConfig",
    "StreamingPolicy",
    "Vad",
    "Word",
    "break_repetitions",
    "normalize_word",
]
