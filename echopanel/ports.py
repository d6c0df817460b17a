"""Ports: the small abstract classes the shell talks to.

Every port is an async context manager (``async with`` releases whatever it holds, and
leaving twice is harmless). Real adapters live next to their subsystem
(``echopanel.capture``, ``echopanel.client.transport``, ``echopanel.asr.whisper``); fakes
live in ``echopanel.testing``. Adapters translate third-party exceptions into the library's
own tree (``echopanel.errors``) at this boundary: nothing else escapes a port method.

This module is pure: it imports no I/O library.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Literal, Self, TypeAlias

import attrs

from echopanel.protocol.messages import Source

__all__ = [
    "AsrBackend",
    "AsrFinalUpdate",
    "AsrPartialUpdate",
    "AsrStream",
    "AsrTuning",
    "AsrUpdate",
    "Capture",
    "PermissionAnswer",
    "PermissionGate",
    "PermissionKind",
    "Transport",
]


class _AsyncResource(abc.ABC):
    """Base: ``async with`` calls :meth:`aclose` on exit."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release everything. Idempotent; never raises for an already closed resource."""


# --------------------------------------------------------------------------- permissions


class PermissionKind(enum.StrEnum):
    """OS permissions a source needs: system audio needs screen recording (macOS)."""

    SCREEN_RECORDING = "screen_recording"
    MICROPHONE = "microphone"


@attrs.frozen(kw_only=True)
class PermissionAnswer:
    """The gate's answer: ``granted``, and when not, ``detail`` saying what is missing."""

    granted: bool
    detail: str = ""


class PermissionGate(_AsyncResource):
    """Checks, and where the OS allows asks for, a permission.

    ``request`` never raises for a refusal: it answers ``granted=False`` with a detail a
    person can act on ("open System Settings → Privacy → Microphone", "no monitor source").
    """

    @abc.abstractmethod
    async def request(self, kind: PermissionKind) -> PermissionAnswer: ...

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------- capture


class Capture(_AsyncResource):
    """One audio source delivering PCM s16le, mono, 16 kHz, in 20-100 ms chunks.

    Contract:
    * ``start()`` opens the device; raises :class:`~echopanel.errors.CaptureError`
      (``system_capture_failed`` / ``microphone_capture_failed``) with the reason.
    * ``frames()`` yields chunks until ``stop()``/``aclose()`` or the end of the stream
      (a file ends; a device does not). It is called at most once.
    * ``stop()`` is idempotent and safe before ``start()``; ``aclose()`` calls it.
    * ``overflows`` counts chunks the capture had to drop (device overflow, full queue).
    """

    source: Source

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    def frames(self) -> AsyncIterator[bytes]: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @property
    def overflows(self) -> int:
        return 0

    async def aclose(self) -> None:
        await self.stop()


# --------------------------------------------------------------------------- transport


class Transport(_AsyncResource):
    """One WebSocket-like connection to the backend (one per session attempt).

    Contract:
    * ``connect``, ``receive`` and ``aclose`` are called from one task (the connection's
      owner task); ``send_text`` / ``send_bytes`` may be called from any task.
    * ``connect(url, headers)`` raises :class:`~echopanel.errors.TransportError`
      (``connection_failed``) when the connection cannot be made.
    * ``receive()`` returns the next text (``str``) or binary (``bytes``) message; when the
      connection is closed it raises ``TransportError`` with ``close_code`` set (and, when
      the close code maps to one, the protocol error code).
    * ``send_text`` / ``send_bytes`` raise ``TransportError`` once closed.
    * ``aclose(code)`` closes politely; idempotent; also releases a transport whose
      ``connect`` failed or was never called.
    """

    @abc.abstractmethod
    async def connect(self, url: str, headers: Mapping[str, str]) -> None: ...

    @abc.abstractmethod
    async def send_text(self, text: str) -> None: ...

    @abc.abstractmethod
    async def send_bytes(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def receive(self) -> str | bytes: ...

    @abc.abstractmethod
    async def aclose(self, code: int = 1000, reason: str = "") -> None: ...


# --------------------------------------------------------------------------- ASR


@attrs.frozen(kw_only=True)
class AsrTuning:
    """Knobs the server's degrade ladder turns on a stream.

    ``decode_interval`` seconds of new audio between re-decodes; ``beam_size`` of those
    re-decodes (1 is greedy); ``final_beam_size`` of the one decode that makes an utterance
    final (the costliest, so the ladder's greedy level sets it to 1 too); ``emit_partials``
    False sends only finals.
    """

    decode_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    beam_size: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    final_beam_size: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    emit_partials: bool = True


@attrs.frozen(kw_only=True)
class AsrPartialUpdate:
    """The whole uncommitted text of the current utterance (replaces the previous one)."""

    text: str
    t0: float
    t1: float
    kind: Literal["partial"] = attrs.field(default="partial", init=False)


@attrs.frozen(kw_only=True)
class AsrFinalUpdate:
    """Committed text; immutable. ``t0``/``t1`` are seconds since the stream began."""

    text: str
    t0: float
    t1: float
    confidence: float
    segment_id: str
    kind: Literal["final"] = attrs.field(default="final", init=False)


AsrUpdate: TypeAlias = AsrPartialUpdate | AsrFinalUpdate


class AsrStream(_AsyncResource):
    """Streaming recognition of one source of one session.

    ``feed`` takes PCM s16le mono 16 kHz and returns the updates it produced (possibly
    none); ``flush`` (end of stream) turns everything pending into finals. ``audio_seconds``
    and ``inference_seconds`` are cumulative, so the caller can compute a real-time factor.
    Raises only :class:`~echopanel.errors.AsrError`.
    """

    @abc.abstractmethod
    async def feed(self, pcm: bytes) -> list[AsrUpdate]: ...

    @abc.abstractmethod
    async def flush(self) -> list[AsrUpdate]: ...

    @abc.abstractmethod
    def tune(self, tuning: AsrTuning) -> None: ...

    @property
    @abc.abstractmethod
    def audio_seconds(self) -> float: ...

    @property
    @abc.abstractmethod
    def inference_seconds(self) -> float: ...

    async def wait_ready(self) -> None:
        """Return when decodes that run beside ``feed`` have updates for :meth:`poll`. A
        stream that decodes only inside ``feed`` never has any: the default waits until the
        caller cancels it."""
        import anyio  # the port itself stays free of an event-loop library

        await anyio.sleep_forever()

    async def poll(self) -> list[AsrUpdate]:
        """The updates of decodes that finished beside ``feed`` since it last returned."""
        return []

    async def aclose(self) -> None:
        return None


class AsrBackend(_AsyncResource):
    """A loaded speech model shared by every session and source of one process.

    ``load()`` loads and warms the model (bounded, once; raises ``AsrError`` with a clear
    reason, e.g. a missing model path); ``open_stream`` is cheap and makes per-source state.
    """

    name: str = "asr"

    @abc.abstractmethod
    async def load(self) -> None: ...

    @property
    @abc.abstractmethod
    def ready(self) -> bool: ...

    @abc.abstractmethod
    def open_stream(self, source: Source, *, tuning: AsrTuning | None = None) -> AsrStream: ...

    def describe(self) -> Mapping[str, str]:
        """What /health shows about the model (name, path, device); no secrets."""
        return {"name": self.name}
