"""``--record-dir``: every received frame written losslessly to a per-source WAV file.

Files are named ``<UTC time>-<server-made id>-<session>-<source>.wav``: the server makes
every name unique (the client's session id, reduced to safe characters, is only a readable
suffix), and a file is created with ``open(..., "xb")`` so an existing file is never
truncated, whatever two clients send. 16 kHz mono s16le, closed on every exit path.

No file I/O runs on the event loop: :meth:`SessionRecorder.write` only queues the frame;
:meth:`SessionRecorder.run` (one task per session) writes the queued frames in arrival order
in a worker thread, and :meth:`SessionRecorder.aclose` writes what is still queued and
closes the files, also in a thread. The queue is bounded (``max_pending_bytes``): when the
disk is slower than the audio, ``write`` waits (the reader slows down) instead of dropping
audio or growing memory. A failing disk stops the recording (``error``, a human message
without paths for the client; the path and the exception go to the server log), never the
session.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import re
import time
import uuid
import wave
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

from echopanel.protocol import SAMPLE_RATE, Source

__all__ = ["RECORDING_FAILED", "SessionRecorder", "recording_stem"]

log = logging.getLogger("echopanel.server")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_MAX_PENDING_BYTES = 10 * 2 * SAMPLE_RATE  # 10 s of audio

#: Machine-readable name of a recording failure (in the ``warning`` status message).
RECORDING_FAILED = "recording_failed"

_ERRNO_MESSAGES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EACCES: "the server may not write to the recording directory",
    errno.EPERM: "the server may not write to the recording directory",
    errno.EROFS: "the recording directory is read-only",
    errno.ENOTDIR: "the recording directory is not a directory",
    errno.EEXIST: "a recording file of that name already exists",
}


def recording_stem(session_id: str, *, now: float | None = None) -> str:
    """A server-made, unique file stem: ``<UTC time>-<random id>-<safe session id>``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    safe = _UNSAFE.sub("_", session_id).strip("._-")[:64] or "session"
    return f"{stamp}-{uuid.uuid4().hex[:12]}-{safe}"


def _human_error(exc: BaseException) -> str:
    """What the client is told about a recording failure: no paths, no exception reprs."""
    reason = _ERRNO_MESSAGES.get(getattr(exc, "errno", None) or -1)
    return f"{RECORDING_FAILED}: {reason or 'the recording could not be written'}"


class SessionRecorder:
    """Per-source WAV writers of one session. ``aclose`` is idempotent."""

    def __init__(
        self,
        directory: Path,
        session_id: str,
        connection_id: str,
        *,
        max_pending_bytes: int = _MAX_PENDING_BYTES,
    ) -> None:
        self.directory = directory
        self.connection_id = connection_id  # logged, not in the name (a client may choose it)
        self._stem = recording_stem(session_id)
        self._writers: dict[Source, tuple[wave.Wave_write, BinaryIO]] = {}
        self.paths: dict[Source, Path] = {}
        self.max_pending_bytes = max_pending_bytes
        self.error: str | None = None
        self._pending: collections.deque[tuple[Source, bytes]] = collections.deque()
        self._pending_bytes = 0
        self._wakeup: anyio.Event | None = None
        self._room: anyio.Event | None = None
        self._lock = anyio.Lock()  # one batch at a time, in order
        self._closed = False

    # ------------------------------------------------------------------ event loop side

    async def write(self, source: Source, pcm: bytes) -> None:
        """Queue ``pcm`` for ``source``'s file; waits only while the queue is full."""
        while (
            self._pending_bytes >= self.max_pending_bytes
            and self.error is None
            and not self._closed
        ):
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()
        if self.error is not None or self._closed or not pcm:
            return
        self._pending.append((source, pcm))
        self._pending_bytes += len(pcm)
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        """Write queued frames until cancelled; returns if the disk fails (see ``error``)."""
        while self.error is None:
            while not self._pending:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            await self._write_pending()

    async def drain(self) -> None:
        """Write everything queued so far (the files then hold every frame received)."""
        if self.error is None:
            await self._write_pending()

    async def aclose(self) -> None:
        """Write what is still queued, then close the files (in a worker thread)."""
        self._closed = True
        self._wake_writers()
        await self.drain()
        writers, self._writers = self._writers, {}
        if writers:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_close_all, list(writers.values()))

    async def _write_pending(self) -> None:
        async with self._lock:
            batch = list(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            self._wake_writers()
            if not batch:
                return
            try:
                # shielded: a batch taken off the queue is always written
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._write_blocking, batch)
            except Exception as exc:  # disk full, permissions, a path that is a file...
                self.error = _human_error(exc)
                log.error(
                    "recording stopped (%s): %s: %s",
                    self.directory, type(exc).__name__, exc,
                    extra={"connection_id": self.connection_id},
                )  # fmt: skip
                self._wake_writers()

    def _wake_writers(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    # ------------------------------------------------------------------ worker thread side

    def _write_blocking(self, batch: list[tuple[Source, bytes]]) -> None:
        for source, pcm in batch:
            entry = self._writers.get(source)
            if entry is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                path = self.directory / f"{self._stem}-{source}.wav"
                # "x": never truncate an existing file, even if two names ever collided
                file = open(path, "xb")  # noqa: SIM115 - closed in aclose()
                writer = wave.open(file, "wb")  # noqa: SIM115 - closed in aclose()
                writer.setnchannels(1)
                writer.setsampwidth(2)
                writer.setframerate(SAMPLE_RATE)
                entry = self._writers[source] = (writer, file)
                self.paths[source] = path
            entry[0].writeframes(pcm)


def _close_all(writers: list[tuple[wave.Wave_write, BinaryIO]]) -> None:
    for writer, file in writers:
        try:
            writer.close()  # patches the header; does not close a file it did not open
            file.close()
        except OSError as exc:
            log.error("closing a recording failed: %s", exc)
            with contextlib.suppress(OSError):
                file.close()
