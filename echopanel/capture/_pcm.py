"""PCM conversion shared by the capture adapters.

Any rate and channel count in, the wire format out: 16 kHz, mono, s16le, cut into fixed
frames of ``frame_ms`` milliseconds (20-100 ms). The resampler is ``soxr``'s streaming
resampler, so chunk boundaries leave no clicks and no drift.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from echopanel.errors import CaptureError, ErrorCode
from echopanel.protocol.messages import SAMPLE_RATE, Source

__all__ = [
    "DEFAULT_FRAME_MS",
    "MAX_FRAME_MS",
    "MIN_FRAME_MS",
    "Framer",
    "PcmConverter",
    "capture_error",
    "error_code_for",
    "frame_bytes",
]

MIN_FRAME_MS = 20
MAX_FRAME_MS = 100
DEFAULT_FRAME_MS = 40


def error_code_for(source: Source) -> ErrorCode:
    """The capture failure code of ``source``."""
    if source == "mic":
        return ErrorCode.MICROPHONE_CAPTURE_FAILED
    return ErrorCode.SYSTEM_CAPTURE_FAILED


def capture_error(source: Source, reason: str) -> CaptureError:
    """A :class:`CaptureError` for ``source`` whose message is the underlying reason.

    The message is the detail only ("No input device matching 'USB'"): the code says what
    failed, and the session composes the line people see ("Microphone capture failed: …").
    """
    return CaptureError(error_code_for(source), reason)


def frame_bytes(frame_ms: int) -> int:
    """Bytes in one frame of ``frame_ms`` ms of 16 kHz mono s16le; validates the range."""
    if isinstance(frame_ms, bool) or not isinstance(frame_ms, int):
        raise TypeError("frame_ms must be an integer number of milliseconds")
    if not MIN_FRAME_MS <= frame_ms <= MAX_FRAME_MS:
        raise ValueError(f"frame_ms must be within {MIN_FRAME_MS}-{MAX_FRAME_MS}, got {frame_ms}")
    return SAMPLE_RATE * frame_ms // 1000 * 2


class PcmConverter:
    """Streaming converter: float or int samples at ``in_rate`` → 16 kHz mono s16le bytes.

    ``push`` takes a block shaped ``(frames,)`` or ``(frames, channels)``; channels are
    averaged. ``flush`` drains what the resampler still holds (end of stream).
    """

    def __init__(self, in_rate: float) -> None:
        if in_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {in_rate}")
        self.in_rate = float(in_rate)
        self._resampler: soxr.ResampleStream | None = None
        if int(self.in_rate) != SAMPLE_RATE:
            self._resampler = soxr.ResampleStream(
                self.in_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
            )

    @staticmethod
    def _mono(block: npt.ArrayLike) -> npt.NDArray[np.float32]:
        data = np.asarray(block)
        if data.dtype.kind == "i":
            scale = float(np.iinfo(data.dtype).max) + 1.0
            data = data.astype(np.float32) / scale
        elif data.dtype != np.float32:
            data = data.astype(np.float32)
        if data.ndim == 2:
            data = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
        elif data.ndim != 1:
            raise ValueError(f"expected a 1-D or 2-D sample block, got shape {data.shape}")
        return np.ascontiguousarray(data, dtype=np.float32)

    @staticmethod
    def _to_s16le(samples: npt.NDArray[np.float32]) -> bytes:
        clipped = np.clip(samples, -1.0, 32767.0 / 32768.0) * 32768.0
        return np.round(clipped).astype("<i2").tobytes()

    def push(self, block: npt.ArrayLike) -> bytes:
        mono = self._mono(block)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono, last=False)
        return self._to_s16le(mono)

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return self._to_s16le(tail)


class Framer:
    """Cuts a byte stream into frames of exactly ``size`` bytes; ``flush`` yields the rest."""

    def __init__(self, size: int) -> None:
        if size <= 0 or size % 2:
            raise ValueError("frame size must be a positive even number of bytes")
        self.size = size
        self._pending = bytearray()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def push(self, data: bytes) -> list[bytes]:
        self._pending += data
        size = self.size
        count = len(self._pending) // size
        frames = [bytes(self._pending[i * size : (i + 1) * size]) for i in range(count)]
        del self._pending[: count * size]
        return frames

    def flush(self) -> list[bytes]:
        rest = bytes(self._pending)
        self._pending.clear()
        return [rest] if rest else []
