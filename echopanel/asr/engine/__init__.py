"""One batched decode engine per process for every stream.

:mod:`echopanel.asr.engine.scheduler` holds the pure scheduling rules (which waiting decode
requests run next, together); :mod:`echopanel.asr.engine.executor` is the edge that runs
batches on a CTranslate2 Whisper model (imported lazily: it needs faster-whisper).
"""

from __future__ import annotations

from echopanel.asr.engine.scheduler import Batch, DecodeRequest, DecodeScheduler, SchedulerConfig
from echopanel.asr.engine.stats import EngineStats, HistogramSnapshot

__all__ = [
    "Batch",
    "DecodeRequest",
    "DecodeScheduler",
    "EngineStats",
    "HistogramSnapshot",
    "SchedulerConfig",
]
