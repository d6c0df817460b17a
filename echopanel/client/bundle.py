"""``SessionBundle``: the per-session record on disk (implements the client ``Recorder``).

For every session attempt one folder (or, with ``zip=True``, one ``.zip``) under the
sessions directory::

    20260125-114313_<session_id>/
        receipt.json      ids, start/end (wall clock, ISO 8601), duration, sources, counts
                          (segments, partials, errors, dropped frames, capture overflows),
                          outcome and the error that ended it, if any
        events.ndjson     one JSON object per line: every state change, status, error,
                          metrics sample, analysis update, final and the summary, with
                          ``t`` (seconds since start) and ``ts`` (Unix time)
        transcript.json   the finals (from ``final_summary`` when the server sent one)
        audio/<source>.wav   only with ``keep_audio=True`` (see :meth:`wrap_capture_factory`)

Every file appears complete or not at all: each is written to a temporary name and moved
into place with ``os.replace``; ``events.ndjson`` grows as ``events.ndjson.part`` (one
``write`` per line, so a crash leaves whole lines) and is renamed on close; ``receipt.json``
is written at open (``outcome: "running"``, the writer's pid and host) and replaced at close.

File I/O never runs on the event loop: ``record`` (one line per event) and the audio tee
(one WAV write per frame) hand their writes to a :class:`~echopanel.client._writer.
BackgroundWriter` — one worker thread, in order, behind a bounded queue that never blocks the
caller (audio writes are refused first, when it is half full; event lines only when it is
full; both counted in the receipt's ``counts.bundle_dropped_writes``; the finals are kept in
memory too, so ``transcript.json`` never misses one). ``open`` and ``close`` (receipt,
transcript, zipping) block their caller: the session runs them in a worker thread
(``anyio.to_thread``); ``close`` waits for every queued write first. :meth:`SessionBundle.
flush` waits for the queued writes (never call it on the event loop).

A client killed mid-session leaves a ``running`` bundle. :func:`recover_bundle` (run for every
such bundle of a dead writer by the next :meth:`SessionBundle.open` under the same root, and
by ``echopanel bundle recover``) turns it into a readable one with outcome ``interrupted``:
``events.ndjson`` from the whole lines of the ``.part``, ``transcript.json`` with every final
recorded, WAV headers repaired, and a receipt that lists only files that exist.

Location: ``root`` if given, else ``$ECHOPANEL_SESSIONS_DIR``, else
``$XDG_DATA_HOME/echopanel/sessions`` (``~/.local/share/echopanel/sessions``).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import re
import socket
import tempfile
import time
import wave
import zipfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from echopanel.client._writer import BackgroundWriter
from echopanel.ports import Capture
from echopanel.protocol.messages import SAMPLE_RATE, FinalSummary, Source, encode

__all__ = [
    "BUNDLE_FILES",
    "RecoveryError",
    "SessionBundle",
    "default_sessions_dir",
    "event_name",
    "event_record",
    "find_interrupted",
    "recover_bundle",
    "write_atomic",
]

BUNDLE_FILES = ("receipt.json", "events.ndjson", "transcript.json")
#: seconds ``close``/``flush`` wait for the writer (a stalled disk: the close is logged, the
#: files are finished by the writer when the disk comes back)
WRITE_TIMEOUT = 30.0
INTERRUPTED = "interrupted"

logger = logging.getLogger("echopanel.bundle")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")

#: Client event class name → the ``event`` field of its JSON record (DESIGN: CLI ``--json``).
_EVENT_NAMES: Mapping[str, str] = {
    "StateChanged": "state",
    "PartialEvent": "partial",
    "FinalEvent": "final",
    "StatusEvent": "status",
    "MetricsEvent": "metrics",
    "AnalysisEvent": "analysis",
    "ErrorEvent": "error",
    "SummaryEvent": "summary",
}


# --------------------------------------------------------------------------- event → JSON


def event_name(event: object) -> str:
    """``state``, ``partial``, ``final``, ``status``, ``metrics``, ``analysis``, ``error``,
    ``summary`` (or the snake-cased class name of an event this module does not know)."""
    cls = type(event).__name__
    known = _EVENT_NAMES.get(cls)
    if known is not None:
        return known
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.removesuffix("Event")).lower()


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if attrs.has(type(value)):
        if isinstance(getattr(value, "type", None), str):  # a wire message
            body = json.loads(encode(value))
            body.pop("type", None)
            return body
        return {k: _plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def event_record(event: object) -> dict[str, Any]:
    """A session event as one flat JSON object with an ``event`` field.

    A wire message inside the event (``message`` / ``summary``) is flattened into the
    record with its wire field names (``text``, ``t0``, ``code``…), minus ``type``.
    """
    record: dict[str, Any] = {"event": event_name(event)}
    if attrs.has(type(event)):
        fields: Mapping[str, Any] = attrs.asdict(event, recurse=False)  # type: ignore[arg-type]
    else:
        fields = dict(getattr(event, "__dict__", {}))
    for key, value in fields.items():
        plain = _plain(value)
        if isinstance(plain, dict) and attrs.has(type(value)) and hasattr(value, "type"):
            for inner_key, inner in plain.items():
                record.setdefault(inner_key, inner)
        else:
            record[key] = plain
    record.pop("resume_token", None)  # a credential: never in a bundle
    return record


# --------------------------------------------------------------------------- files


def default_sessions_dir() -> Path:
    """``$ECHOPANEL_SESSIONS_DIR``, else ``$XDG_DATA_HOME/echopanel/sessions``."""
    explicit = os.environ.get("ECHOPANEL_SESSIONS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "echopanel" / "sessions"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=False) + "\n"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- finals


def _final_key(final: Mapping[str, Any]) -> Any:
    segment = final.get("segment_id")
    return segment if segment else (final.get("source"), final.get("t0"), final.get("text"))


def _merged_finals(attempt: _Attempt, summary: FinalSummary | None) -> list[dict[str, Any]]:
    """Every final received live plus any that only the summary has, sorted by ``t0``.

    The summary's entry wins for a segment both have. A truncated or missing summary
    therefore never costs a final the client received."""
    merged: dict[Any, dict[str, Any]] = {}
    if summary is not None:
        for entry in summary.transcript:
            plain = _plain(entry)
            merged.setdefault(_final_key(plain), plain)
    for final in attempt.finals:
        merged.setdefault(_final_key(final), final)
    return sorted(merged.values(), key=lambda f: f.get("t0") or 0.0)


def _summary_state(summary: FinalSummary | None) -> tuple[str, int | None]:
    """``missing``, ``truncated`` (the server dropped entries to bound its size; how many,
    when it says) or ``complete``."""
    if summary is None:
        return "missing", None
    if not summary.truncated:
        return "complete", None
    return "truncated", summary.omitted_finals


# --------------------------------------------------------------------------- the recorder


@attrs.define(eq=False)
class _Attempt:
    directory: Path
    session_id: str
    attempt_id: str
    sources: tuple[str, ...]
    started_at: float
    started_wall: float
    events_part: Any = None
    counts: dict[str, int] = attrs.Factory(
        lambda: {"segments": 0, "partials": 0, "errors": 0, "events": 0}
    )
    dropped: dict[str, int] = attrs.Factory(dict)
    client_dropped: int = 0
    finals: list[dict[str, Any]] = attrs.Factory(list)
    states: list[str] = attrs.Factory(list)
    #: where the server lost the session and a new server session continued it
    gaps: list[dict[str, Any]] = attrs.Factory(list)
    last_error: dict[str, Any] | None = None
    writes_dropped_at_open: dict[str, int] = attrs.Factory(dict)


class SessionBundle:
    """Records sessions as bundles on disk; one instance can record many attempts in turn.

    Implements :class:`echopanel.client.recorder.Recorder`; it never raises into the
    session for an event it does not know (unknown events are recorded by class name).

    Pass it as ``Session(..., recorder=SessionBundle())``. ``path`` is the last bundle
    written (a folder, or a ``.zip`` with ``zip=True``); ``paths`` every one.
    """

    def __init__(
        self, root: Path | str | None = None, *, zip: bool = False, keep_audio: bool = False
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_sessions_dir()
        self.zip = zip
        self.keep_audio = keep_audio
        self.paths: list[Path] = []
        self._current: _Attempt | None = None
        self._audio: dict[str, wave.Wave_write] = {}
        self._overflows: dict[str, Callable[[], int]] = {}
        self._writer = BackgroundWriter()
        self._recovered = False  # interrupted bundles under root recovered (at first open)
        #: bundles the first open found interrupted and recovered
        self.recovered: list[Path] = []

    def recover_interrupted(self) -> list[Path]:
        """Recover every bundle under :attr:`root` left ``running`` by a writer that is
        gone (killed mid-session). Failures are logged, never raised (a session is
        starting)."""
        done: list[Path] = []
        for directory in find_interrupted(self.root):
            try:
                done.append(recover_bundle(directory))
            except (OSError, RecoveryError, ValueError):
                logger.exception("could not recover the interrupted bundle %s", directory)
        self.recovered.extend(done)
        return done

    def __repr__(self) -> str:
        return (
            f"SessionBundle(root={str(self.root)!r}, zip={self.zip}, keep_audio={self.keep_audio})"
        )

    @property
    def path(self) -> Path | None:
        return self.paths[-1] if self.paths else None

    @property
    def directory(self) -> Path | None:
        """The folder of the attempt being recorded (None between attempts)."""
        return self._current.directory if self._current else None

    # ------------------------------------------------------------------ Recorder protocol

    def open(
        self,
        *,
        session_id: str,
        attempt_id: str,
        sources: Iterable[str],
        started_at: float,
    ) -> None:
        if self._current is not None:
            self.close(outcome="abandoned", ended_at=started_at, summary=None)
        if not self._recovered:
            self._recovered = True
            self.recover_interrupted()
        # the session passes wall-clock seconds; anything else (a monotonic clock) is
        # mapped onto "now" so that receipts always carry real dates
        wall = started_at if started_at > 1e9 else time.time()
        stamp = datetime.fromtimestamp(wall).strftime("%Y%m%d-%H%M%S")
        safe = _UNSAFE.sub("_", session_id).strip("._")[:80] or "session"
        directory = self.root / f"{stamp}_{safe}"
        suffix = 1
        while directory.exists() or directory.with_suffix(".zip").exists():
            suffix += 1
            directory = self.root / f"{stamp}_{safe}-{suffix}"
        directory.mkdir(parents=True)
        attempt = _Attempt(
            directory=directory,
            session_id=session_id,
            attempt_id=attempt_id,
            sources=tuple(sources),
            started_at=started_at,
            started_wall=wall,
            writes_dropped_at_open=dict(self._writer.dropped),
        )
        attempt.events_part = open(  # noqa: SIM115 - closed in close()
            directory / "events.ndjson.part", "a", encoding="utf-8", buffering=1
        )
        self._current = attempt
        write_atomic(directory / "receipt.json", _json(self._receipt(attempt, None, None, None)))

    def record(self, event: object, at: float) -> None:
        attempt = self._current
        if attempt is None:
            return
        record = event_record(event)
        kind = record["event"]
        if kind == "partial":
            attempt.counts["partials"] += 1
            return  # partials are superseded by finals; only counted
        if kind == "final":
            attempt.counts["segments"] += 1
            attempt.finals.append(
                {
                    k: record.get(k)
                    for k in ("source", "t0", "t1", "text", "confidence", "segment_id")
                }
            )
        elif kind == "error":
            attempt.counts["errors"] += 1
            attempt.last_error = {"code": record.get("code"), "message": record.get("message")}
        elif kind == "metrics":
            source = str(record.get("source", "system"))
            dropped = int(record.get("dropped_frames") or 0)
            attempt.dropped[source] = max(attempt.dropped.get(source, 0), dropped)
        elif kind == "state":
            attempt.states.append(str(record.get("state")))
        elif kind == "status" and record.get("reason") == "resume_gap":
            attempt.gaps.append(
                {"t": round(at - attempt.started_at, 3), "message": record.get("message")}
            )
        attempt.counts["events"] += 1
        line = {
            "t": round(at - attempt.started_at, 3),
            "ts": round(attempt.started_wall + (at - attempt.started_at), 3),
            **record,
        }
        text = json.dumps(line, ensure_ascii=False) + "\n"
        self._writer.submit(lambda: attempt.events_part.write(text), kind="events")

    def flush(self, timeout: float = WRITE_TIMEOUT) -> None:
        """Wait until every queued write is on disk (blocks: not on the event loop)."""

        def flush_files() -> None:
            attempt = self._current
            if attempt is not None and attempt.events_part is not None:
                attempt.events_part.flush()
            for writer in self._audio.values():
                writer._file.flush()  # type: ignore[attr-defined]

        self._writer.call(flush_files, timeout=timeout)

    def close(
        self,
        *,
        outcome: str,
        ended_at: float,
        summary: FinalSummary | None,
        client_dropped_frames: int = 0,
    ) -> None:
        attempt, self._current = self._current, None
        if attempt is None:
            return
        attempt.client_dropped = client_dropped_frames
        overflows = sum(f() for f in self._overflows.values())

        def finish() -> Path:  # on the writer: after every queued line and frame
            self._close_audio(attempt)
            attempt.events_part.close()
            directory = attempt.directory
            os.replace(directory / "events.ndjson.part", directory / "events.ndjson")
            transcript = self._transcript(attempt, summary)
            write_atomic(directory / "transcript.json", _json(transcript))
            receipt = self._receipt(attempt, outcome, ended_at, summary, overflows=overflows)
            write_atomic(directory / "receipt.json", _json(receipt))
            return self._zip(directory) if self.zip else directory

        try:
            path: Path = self._writer.call(finish, timeout=WRITE_TIMEOUT)
        except TimeoutError:
            logger.warning("bundle %s: disk stalled; finished later", attempt.directory)
            path = attempt.directory.with_suffix(".zip") if self.zip else attempt.directory
        self.paths.append(path)

    # ------------------------------------------------------------------ contents

    def _receipt(
        self,
        attempt: _Attempt,
        outcome: str | None,
        ended_at: float | None,
        summary: FinalSummary | None,
        *,
        overflows: int = 0,
    ) -> dict[str, Any]:
        duration = None if ended_at is None else max(0.0, ended_at - attempt.started_at)
        dropped = dict(attempt.dropped)
        if summary is not None:
            for name, stats in summary.sources.items():
                dropped[name] = max(dropped.get(name, 0), stats.frames_dropped)
        merged = _merged_finals(attempt, summary)
        segments = max(attempt.counts["segments"], len(merged))
        summary_state, omitted = _summary_state(summary)
        receipt: dict[str, Any] = {
            "format": "echopanel-session-bundle/1",
            "session_id": attempt.session_id,
            "attempt_id": attempt.attempt_id,
            "connection_id": summary.connection_id if summary is not None else None,
            "sources": list(attempt.sources),
            "started_at": _iso(attempt.started_wall),
            "ended_at": None if duration is None else _iso(attempt.started_wall + duration),
            "duration_seconds": None if duration is None else round(duration, 3),
            "outcome": outcome or "running",
            "error": attempt.last_error,
            "states": attempt.states,
            "counts": {
                "segments": segments,
                "partials": attempt.counts["partials"],
                "errors": attempt.counts["errors"],
                "events": attempt.counts["events"],
                "dropped_frames": sum(dropped.values()) + attempt.client_dropped,
                "client_dropped_frames": attempt.client_dropped,
                "capture_overflows": overflows,
                # writes the bundle writer refused (a stalled disk); see the module docstring
                "bundle_dropped_writes": {
                    kind: count - attempt.writes_dropped_at_open.get(kind, 0)
                    for kind, count in self._writer.dropped.items()
                    if count > attempt.writes_dropped_at_open.get(kind, 0)
                },
            },
            "dropped_frames": dropped,
            # the bundle keeps every final the client received, whatever the summary holds
            "finals": {
                "kept": len(merged),
                "received": len(attempt.finals),
                "in_summary": len(summary.transcript) if summary is not None else None,
                "summary": summary_state,
                "summary_omitted": omitted,
                "every_received_final_kept": True,
            },
            "audio_seconds": (
                {name: stats.audio_seconds for name, stats in summary.sources.items()}
                if summary is not None
                else {}
            ),
            "files": (
                ["receipt.json", "events.ndjson.part"]  # what exists while running
                if outcome is None
                else [*BUNDLE_FILES, *(f"audio/{s}.wav" for s in self._audio_sources(attempt))]
            ),
        }
        if outcome is None:  # who writes it: a later start recovers it only once it is gone
            receipt["writer"] = {"pid": os.getpid(), "host": socket.gethostname()}
        return receipt

    @staticmethod
    def _transcript(attempt: _Attempt, summary: FinalSummary | None) -> dict[str, Any]:
        finals = _merged_finals(attempt, summary)
        return {
            "session_id": attempt.session_id,
            "attempt_id": attempt.attempt_id,
            "finals": finals,
            "text": " ".join(str(f.get("text", "")).strip() for f in finals).strip(),
            "markdown": summary.markdown if summary is not None and not attempt.gaps else "",
            **({"gaps": list(attempt.gaps)} if attempt.gaps else {}),
        }

    def _zip(self, directory: Path) -> Path:
        target = directory.with_suffix(".zip")
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(directory.rglob("*")):
                    if file.is_file():
                        archive.write(file, file.relative_to(directory).as_posix())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        for file in sorted(directory.rglob("*"), reverse=True):
            file.unlink() if file.is_file() else file.rmdir()
        directory.rmdir()
        return target

    # ------------------------------------------------------------------ audio (opt-in)

    def _audio_sources(self, attempt: _Attempt) -> list[str]:
        audio_dir = attempt.directory / "audio"
        if not self.keep_audio or not audio_dir.exists():
            return []
        return sorted(p.stem for p in audio_dir.glob("*.wav"))

    def _write_audio(self, source: str, pcm: bytes) -> None:
        attempt = self._current
        if attempt is None or not self.keep_audio:
            return
        self._writer.submit(
            lambda: self._append_audio(attempt, source, pcm), kind="audio", droppable=True
        )

    def _append_audio(self, attempt: _Attempt, source: str, pcm: bytes) -> None:
        """On the writer thread: open ``audio/.<source>.wav.part`` once, append ``pcm``."""
        writer = self._audio.get(source)
        if writer is None:
            audio_dir = attempt.directory / "audio"
            audio_dir.mkdir(exist_ok=True)
            writer = wave.open(str(audio_dir / f".{source}.wav.part"), "wb")  # noqa: SIM115
            writer.setnchannels(1)
            writer.setsampwidth(2)
            writer.setframerate(SAMPLE_RATE)
            self._audio[source] = writer
        writer.writeframes(pcm)

    def _close_audio(self, attempt: _Attempt) -> None:
        writers, self._audio = self._audio, {}
        for source, writer in writers.items():
            writer.close()
            audio_dir = attempt.directory / "audio"
            os.replace(audio_dir / f".{source}.wav.part", audio_dir / f"{source}.wav")

    def wrap_capture_factory(
        self, factory: Callable[[Source], Capture]
    ) -> Callable[[Source], Capture]:
        """Wrap a capture factory so the bundle sees every capture.

        Each capture's overflow count goes into the receipt; with ``keep_audio`` every
        frame is also written to ``audio/<source>.wav`` (16 kHz mono s16le).
        """

        def wrapped(source: Source) -> Capture:
            inner = factory(source)
            self._overflows[source] = lambda: inner.overflows
            return _TeeCapture(inner, self)

        return wrapped


class _TeeCapture(Capture):
    """Passes a capture through, handing each frame to the bundle."""

    def __init__(self, inner: Capture, bundle: SessionBundle) -> None:
        self.inner = inner
        self.source = inner.source
        self._bundle = bundle

    def __repr__(self) -> str:
        return f"_TeeCapture({self.inner!r})"

    @property
    def overflows(self) -> int:
        return self.inner.overflows

    async def start(self) -> None:
        await self.inner.start()

    async def frames(self) -> AsyncIterator[bytes]:
        async for frame in self.inner.frames():
            self._bundle._write_audio(self.source, frame)
            yield frame

    async def stop(self) -> None:
        await self.inner.stop()

    async def aclose(self) -> None:
        await self.inner.aclose()


# --------------------------------------------------------------------------- recovery


class RecoveryError(Exception):
    """A folder is not a bundle that can be recovered (the message says why)."""


def _read_receipt(directory: Path) -> dict[str, Any]:
    try:
        receipt = json.loads((directory / "receipt.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecoveryError(f"{directory} is not a session bundle (no receipt.json)") from None
    except ValueError as exc:
        raise RecoveryError(f"{directory}/receipt.json is not JSON: {exc}") from None
    if not isinstance(receipt, dict) or "session_id" not in receipt:
        raise RecoveryError(f"{directory}/receipt.json is not a session bundle receipt")
    return receipt


def _writer_alive(receipt: Mapping[str, Any]) -> bool:
    """Whether the process that wrote a ``running`` receipt may still be writing it."""
    writer = receipt.get("writer")
    if not isinstance(writer, Mapping):
        return False  # written before receipts named their writer: nobody to wait for
    if writer.get("host") != socket.gethostname():
        return True  # another machine's (a shared folder): never ours to take over
    pid = writer.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def find_interrupted(root: Path) -> list[Path]:
    """Bundle folders under ``root`` whose receipt says ``running`` and whose writer is gone."""
    if not root.is_dir():
        return []
    found: list[Path] = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            receipt = _read_receipt(directory)
        except RecoveryError:
            continue
        if receipt.get("outcome") == "running" and not _writer_alive(receipt):
            found.append(directory)
    return found


def _repair_wav(part: Path, target: Path) -> None:
    """A WAV whose writer died has a header that says "no data": rewrite it around the PCM."""
    raw = part.read_bytes()
    pcm = raw[44:] if raw[:4] == b"RIFF" and len(raw) >= 44 else b""
    pcm = pcm[: len(pcm) - len(pcm) % 2]
    tmp = target.with_name(f".{target.name}.tmp")
    with wave.open(str(tmp), "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(pcm)
    os.replace(tmp, target)
    part.unlink()


def recover_bundle(directory: Path | str, *, force: bool = False) -> Path:
    """Turn a bundle left ``running`` (its client was killed) into a readable one.

    Keeps every whole line of ``events.ndjson.part`` (a line cut by the crash is dropped) as
    ``events.ndjson``, writes ``transcript.json`` with every final recorded, repairs the
    WAV files of ``keep_audio``, and replaces the receipt: outcome ``interrupted``, the end
    at the last event, counts recomputed, only files that exist. Returns the folder.

    Raises :class:`RecoveryError` if it is not a bundle, is not ``running``, or its writer
    is still alive on this machine (unless ``force``).
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise RecoveryError(f"{directory} is not a bundle folder")
    receipt = _read_receipt(directory)
    if receipt.get("outcome") != "running":
        raise RecoveryError(
            f"{directory} is not interrupted (outcome {receipt.get('outcome')!r}): "
            "nothing to recover"
        )
    if not force and _writer_alive(receipt):
        raise RecoveryError(f"{directory} is still being written by a running client")
    part = directory / "events.ndjson.part"
    lines: list[str] = []
    records: list[dict[str, Any]] = []
    if part.exists():
        for line in part.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the line the crash cut off
            if isinstance(record, dict):
                lines.append(line)
                records.append(record)
    finals: dict[Any, dict[str, Any]] = {}
    counts = {"segments": 0, "partials": 0, "errors": 0, "events": len(records)}
    states: list[str] = []
    last_error: dict[str, Any] | None = None
    dropped: dict[str, int] = {}
    for record in records:
        kind = record.get("event")
        if kind == "final":
            final = {k: record.get(k) for k in ("source", "t0", "t1", "text", "confidence",
                                                 "segment_id")}  # fmt: skip
            finals.setdefault(_final_key(final), final)
        elif kind == "error":
            counts["errors"] += 1
            last_error = {"code": record.get("code"), "message": record.get("message")}
        elif kind == "state":
            states.append(str(record.get("state")))
        elif kind == "metrics":
            source = str(record.get("source", "system"))
            dropped[source] = max(dropped.get(source, 0), int(record.get("dropped_frames") or 0))
    ordered = sorted(finals.values(), key=lambda f: f.get("t0") or 0.0)
    counts["segments"] = len(ordered)
    write_atomic(directory / "events.ndjson", "".join(f"{line}\n" for line in lines))
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    write_atomic(
        directory / "transcript.json",
        _json(
            {
                "session_id": receipt.get("session_id"),
                "attempt_id": receipt.get("attempt_id"),
                "finals": ordered,
                "text": " ".join(str(f.get("text", "")).strip() for f in ordered).strip(),
                "markdown": "",
            }
        ),
    )
    audio_dir = directory / "audio"
    audio: list[str] = []
    if audio_dir.is_dir():
        for wav_part in sorted(audio_dir.glob(".*.wav.part")):
            source = wav_part.name[1 : -len(".wav.part")]
            _repair_wav(wav_part, audio_dir / f"{source}.wav")
        audio = [f"audio/{p.name}" for p in sorted(audio_dir.glob("*.wav"))]
    started = receipt.get("started_at")
    ended_ts = max((r["ts"] for r in records if isinstance(r.get("ts"), int | float)),
                   default=None)  # fmt: skip
    duration = max((r["t"] for r in records if isinstance(r.get("t"), int | float)),
                   default=None)  # fmt: skip
    receipt.pop("writer", None)
    receipt.update(
        outcome=INTERRUPTED,
        error=last_error,
        states=states,
        ended_at=_iso(ended_ts) if ended_ts is not None else started,
        duration_seconds=duration,
        counts={
            **(receipt.get("counts") or {}),
            **counts,
            "dropped_frames": sum(dropped.values()),
        },
        dropped_frames=dropped,
        finals={
            "kept": len(ordered),
            "received": len(ordered),
            "in_summary": None,
            "summary": "missing",
            "summary_omitted": None,
            "every_received_final_kept": True,
        },
        files=[*BUNDLE_FILES, *audio],
        recovered_at=_iso(time.time()),
    )
    write_atomic(directory / "receipt.json", _json(receipt))
    return directory
