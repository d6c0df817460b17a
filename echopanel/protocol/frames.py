"""Binary audio frame codec: ``b"EP"`` + version ``0x01`` + source byte + PCM s16le.

A binary frame without the ``EP`` header is taken as ``system`` PCM (v0.2 compatibility).
Frames larger than :data:`MAX_FRAME_BYTES` are refused with ``frame_too_large``.
"""

from __future__ import annotations

from typing import Final

import attrs

from echopanel.errors import ErrorCode, ProtocolError
from echopanel.protocol.messages import SAMPLE_RATE, Source

__all__ = [
    "FRAME_MAGIC",
    "FRAME_VERSION",
    "HEADER_BYTES",
    "MAX_FRAME_BYTES",
    "SOURCE_BYTES",
    "AudioFrame",
    "decode_audio_frame",
    "encode_audio_frame",
    "pcm_seconds",
]

FRAME_MAGIC: Final = b"EP"
FRAME_VERSION: Final = 1
HEADER_BYTES: Final = 4
MAX_FRAME_BYTES: Final = 64 * 1024
SOURCE_BYTES: Final[dict[Source, int]] = {"system": 0, "mic": 1}
_BYTE_SOURCES: Final[dict[int, Source]] = {v: k for k, v in SOURCE_BYTES.items()}


@attrs.frozen(kw_only=True)
class AudioFrame:
    """One chunk of PCM s16le mono 16 kHz from one source."""

    source: Source
    pcm: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")

    @property
    def seconds(self) -> float:
        return pcm_seconds(self.pcm)


def pcm_seconds(pcm: bytes) -> float:
    """Duration of PCM s16le mono 16 kHz bytes, in seconds."""
    return len(pcm) / (2 * SAMPLE_RATE)


def encode_audio_frame(source: Source, pcm: bytes) -> bytes:
    """Build a binary frame. Raises ProtocolError on odd-length or oversized PCM."""
    if source not in SOURCE_BYTES:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"unknown source {source!r}")
    if len(pcm) % 2:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "PCM s16le must have an even length")
    frame = FRAME_MAGIC + bytes((FRAME_VERSION, SOURCE_BYTES[source])) + pcm
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {len(frame)} bytes > {MAX_FRAME_BYTES}"
        )
    return frame


def decode_audio_frame(data: bytes) -> AudioFrame:
    """Parse a binary frame. Raises only ProtocolError.

    ``frame_too_large`` for frames above the limit; ``invalid_message`` for an unknown
    version or source byte, or odd-length PCM.
    """
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE, f"frame of {len(data)} bytes > {MAX_FRAME_BYTES}"
        )
    if data[:2] == FRAME_MAGIC and len(data) >= HEADER_BYTES:
        version, source_byte = data[2], data[3]
        if version != FRAME_VERSION:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"unsupported frame version {version}")
        source = _BYTE_SOURCES.get(source_byte)
        if source is None:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"unknown source byte {source_byte}")
        pcm = bytes(data[HEADER_BYTES:])
    else:
        source, pcm = "system", bytes(data)
    if len(pcm) % 2:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "PCM s16le must have an even length")
    return AudioFrame(source=source, pcm=pcm)
