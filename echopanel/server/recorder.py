"""``--record-dir``: every received frame written losslessly to a per-source WAV file.

Files are named ``<session>-<connection>-<source>.wav`` (the session id reduced to safe
characters), 16 kHz mono s16le, written as frames arrive and closed on every exit path.
"""

from __future__ import annotations

import re
import wave
from pathlib import Path

from echopanel.protocol import SAMPLE_RATE, Source

__all__ = ["SessionRecorder"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class SessionRecorder:
    """Per-source WAV writers of one session. ``close`` is idempotent."""

    def __init__(self, directory: Path, session_id: str, connection_id: str) -> None:
        self.directory = directory
        safe = _UNSAFE.sub("_", session_id).strip("._")[:64] or "session"
        self._stem = f"{safe}-{_UNSAFE.sub('_', connection_id)[:40]}"
        self._writers: dict[Source, wave.Wave_write] = {}
        self.paths: dict[Source, Path] = {}

    def write(self, source: Source, pcm: bytes) -> None:
        writer = self._writers.get(source)
        if writer is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"{self._stem}-{source}.wav"
            writer = wave.open(str(path), "wb")  # noqa: SIM115 - closed in close()
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(SAMPLE_RATE)
            self._writers[source] = writer
            self.paths[source] = path
        writer.writeframes(pcm)

    def close(self) -> None:
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()
