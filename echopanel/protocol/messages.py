"""Wire messages (protocol v1, compatible with EchoPanel v0.2) as frozen value objects.

Pure: JSON text in, value objects out, and back. ``decode_client`` / ``decode_server``
raise only :class:`~echopanel.errors.ProtocolError`, carrying the error code the server
answers with (``invalid_message`` or ``unsupported_audio_format``). Unknown extra fields
are ignored (forward compatibility); missing or ill-typed known fields are errors.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

import attrs

from echopanel.errors import ErrorCode, ProtocolError

__all__ = [
    "CHANNELS",
    "ENDPOINT_PATH",
    "FORMAT",
    "MAX_RESUME_TOKEN_LEN",
    "MAX_SESSION_ID_LEN",
    "PROTOCOL_VERSION",
    "SAMPLE_RATE",
    "SOURCES",
    "STATUS_STATES",
    "AnalysisUpdate",
    "AsrFinal",
    "AsrPartial",
    "AudioMessage",
    "ClientMessage",
    "ErrorMessage",
    "FinalSummary",
    "MetricsMessage",
    "ResumeMessage",
    "ServerMessage",
    "Source",
    "SourceStats",
    "StartMessage",
    "StatusMessage",
    "StopMessage",
    "TranscriptEntry",
    "decode_client",
    "decode_server",
    "encode",
    "normalize_source",
    "validate_session_id",
]

Source: TypeAlias = Literal["system", "mic"]
SOURCES: Final[tuple[Source, ...]] = ("system", "mic")
SAMPLE_RATE: Final = 16000
FORMAT: Final = "pcm_s16le"
CHANNELS: Final = 1
MAX_SESSION_ID_LEN: Final = 256
#: Longest ``resume_token`` accepted in a ``resume`` (the server's are 43 characters).
MAX_RESUME_TOKEN_LEN: Final = 256
#: The wire protocol's version: 1.1 adds ``resume`` (v1 and v0.2 clients are unaffected).
PROTOCOL_VERSION: Final = "1.1"
#: The live-listener WebSocket endpoint.
ENDPOINT_PATH: Final = "/ws/live-listener"
STATUS_STATES: Final = frozenset(
    {"connected", "streaming", "buffering", "overloaded", "backpressure", "warning"}
)

_SOURCE_ALIASES: Final[dict[str, Source]] = {
    "system": "system",
    "mic": "mic",
    "microphone": "mic",
}


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_MESSAGE, message)


def normalize_source(value: object) -> Source:
    """Map a wire source name (``system``, ``mic``, alias ``microphone``) to a ``Source``."""
    if isinstance(value, str) and value in _SOURCE_ALIASES:
        return _SOURCE_ALIASES[value]
    raise _invalid(f"unknown source {value!r}: expected 'system' or 'mic'")


def validate_session_id(value: object) -> str:
    """Return ``value`` if it is a valid session id (1-256 chars, not only whitespace)."""
    if not isinstance(value, str):
        raise _invalid("session_id must be a string")
    if not value.strip():
        raise _invalid("session_id must not be empty")
    if len(value) > MAX_SESSION_ID_LEN:
        raise _invalid(f"session_id longer than {MAX_SESSION_ID_LEN} characters")
    return value


def _ids_fields() -> Any:
    return attrs.field(default=None, kw_only=True)


# --------------------------------------------------------------------------- client → server


@attrs.frozen(kw_only=True)
class StartMessage:
    """``{"type": "start"}``: opens a session on the connection."""

    session_id: str
    attempt_id: str
    connection_id: str | None = None
    sample_rate: int = SAMPLE_RATE
    format: str = FORMAT
    channels: int = CHANNELS
    sources: tuple[Source, ...] | None = None
    client_features: Mapping[str, Any] | None = attrs.field(default=None, eq=False)
    type: Literal["start"] = attrs.field(default="start", init=False)


@attrs.frozen(kw_only=True)
class AudioMessage:
    """``{"type": "audio"}``: base64 PCM fallback for clients that cannot send binary."""

    source: Source
    pcm: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    type: Literal["audio"] = attrs.field(default="audio", init=False)


@attrs.frozen(kw_only=True)
class StopMessage:
    """``{"type": "stop"}``: asks the server to flush and send ``final_summary``."""

    session_id: str
    type: Literal["stop"] = attrs.field(default="stop", init=False)


@attrs.frozen(kw_only=True)
class ResumeMessage:
    """``{"type": "resume"}``: re-attach a session whose connection was lost (protocol 1.1).

    Sent instead of ``start`` on a new connection. ``resume_token`` is the one the server
    gave in the session's ``status: streaming``; ``last_segment_id`` the last final the
    client received (``None``: none); ``audio_seconds`` the audio sent so far per source.
    """

    session_id: str
    resume_token: str = attrs.field(repr=False)
    last_segment_id: str | None = None
    audio_seconds: Mapping[str, float] = attrs.field(factory=dict)
    type: Literal["resume"] = attrs.field(default="resume", init=False)


ClientMessage: TypeAlias = StartMessage | AudioMessage | StopMessage | ResumeMessage


# --------------------------------------------------------------------------- server → client


@attrs.frozen(kw_only=True)
class StatusMessage:
    """``status``: ``connected``, ``streaming`` (the start ACK), load states, ``warning``.

    ``reason`` names why, when a machine should know (``drain``: the server shuts down).
    The ``streaming`` ACK carries ``resume_token`` when the server can resume the session;
    the ACK of a ``resume`` has ``resumed: true`` and ``audio_seconds``: per source, the
    audio position (seconds since the stream start) from which the server needs audio.
    """

    state: str
    message: str = ""
    backlog_seconds: float | None = None
    dropped_frames: int | None = None
    degrade_level: int | None = None
    reason: str | None = None
    resume_token: str | None = attrs.field(default=None, repr=False)
    resumed: bool | None = None
    audio_seconds: Mapping[str, float] | None = None
    session_id: str | None = _ids_fields()
    attempt_id: str | None = _ids_fields()
    connection_id: str | None = _ids_fields()
    type: Literal["status"] = attrs.field(default="status", init=False)


@attrs.frozen(kw_only=True)
class AsrPartial:
    """The whole not-yet-final text of a source's current utterance."""

    source: Source
    text: str
    t0: float
    t1: float
    stable: bool = False
    session_id: str | None = _ids_fields()
    attempt_id: str | None = _ids_fields()
    connection_id: str | None = _ids_fields()
    type: Literal["asr_partial"] = attrs.field(default="asr_partial", init=False)


@attrs.frozen(kw_only=True)
class AsrFinal:
    """An immutable final segment; ``segment_id`` is unique per session."""

    source: Source
    text: str
    t0: float
    t1: float
    confidence: float
    segment_id: str
    stable: bool = True
    session_id: str | None = _ids_fields()
    attempt_id: str | None = _ids_fields()
    connection_id: str | None = _ids_fields()
    type: Literal["asr_final"] = attrs.field(default="asr_final", init=False)


@attrs.frozen(kw_only=True)
class MetricsMessage:
    """About 1 Hz per source: load and health of that source's pipeline."""

    source: Source
    backlog_seconds: float = 0.0
    queue_fill: float = 0.0
    dropped_frames: int = 0
    realtime_factor: float = 0.0
    degrade_level: int = 0
    active_sessions: int = 0
    session_id: str | None = _ids_fields()
    attempt_id: str | None = _ids_fields()
    connection_id: str | None = _ids_fields()
    type: Literal["metrics"] = attrs.field(default="metrics", init=False)


@attrs.frozen(kw_only=True)
class ErrorMessage:
    """``error``: machine-readable ``code`` plus a ``message`` for people."""

    code: ErrorCode
    message: str
    session_id: str | None = _ids_fields()
    attempt_id: str | None = _ids_fields()
    connection_id: str | None = _ids_fields()
    type: Literal["error"] = attrs.field(default="error", init=False)


@attrs.frozen(kw_only=True)
class AnalysisUpdate:
    """``analysis_update``: keywords/topics of the recent transcript."""

    keywords: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    session_id: str | None = _ids_fields()
    attempt_id: str | None = _ids_fields()
    connection_id: str | None = _ids_fields()
    type: Literal["analysis_update"] = attrs.field(default="analysis_update", init=False)


@attrs.frozen(kw_only=True)
class TranscriptEntry:
    """One final in the ``final_summary`` transcript."""

    source: Source
    t0: float
    t1: float
    text: str
    confidence: float
    segment_id: str


@attrs.frozen(kw_only=True)
class SourceStats:
    """Per-source counters in ``final_summary``."""

    audio_seconds: float = 0.0
    frames_dropped: int = 0


@attrs.frozen(kw_only=True)
class FinalSummary:
    """The session's final transcript (sorted by ``t0``) and counters.

    The server bounds its size: when finals had to be left out (the oldest first),
    ``truncated`` is true and ``omitted_finals`` says how many; otherwise both are absent.
    """

    transcript: tuple[TranscriptEntry, ...] = ()
    markdown: str = ""
    sources: Mapping[str, SourceStats] = attrs.field(factory=dict)
    counts: Mapping[str, int] = attrs.field(factory=dict)
    truncated: bool | None = None
    omitted_finals: int | None = None
    session_id: str | None = _ids_fields()
    attempt_id: str | None = _ids_fields()
    connection_id: str | None = _ids_fields()
    type: Literal["final_summary"] = attrs.field(default="final_summary", init=False)


ServerMessage: TypeAlias = (
    StatusMessage
    | AsrPartial
    | AsrFinal
    | MetricsMessage
    | ErrorMessage
    | AnalysisUpdate
    | FinalSummary
)


# --------------------------------------------------------------------------- encoding


def _to_wire(value: Any) -> Any:
    if isinstance(value, ErrorCode):
        return value.value
    if attrs.has(type(value)):
        return {
            k: _to_wire(v) for k, v in attrs.asdict(value, recurse=False).items() if v is not None
        }
    if isinstance(value, tuple | list):
        return [_to_wire(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_wire(v) for k, v in value.items()}
    return value


def encode(message: ClientMessage | ServerMessage) -> str:
    """Encode a message as compact JSON text. ``None`` fields are omitted."""
    if isinstance(message, AudioMessage):
        body: dict[str, Any] = {
            "type": "audio",
            "source": message.source,
            "data": base64.b64encode(message.pcm).decode("ascii"),
        }
    else:
        body = _to_wire(message)
        body = {"type": body.pop("type"), **body}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------------------- decoding helpers


def _parse_object(text: str | bytes) -> dict[str, Any]:
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _invalid(f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _invalid("message must be a JSON object")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _str(obj: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _invalid(f"field {key!r} must be a string")
    return value


def _int(obj: Mapping[str, Any], key: str, *, default: int | None = None) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"field {key!r} must be an integer")
    return value


def _opt_int(obj: Mapping[str, Any], key: str) -> int | None:
    return None if obj.get(key) is None else _int(obj, key)


def _float(obj: Mapping[str, Any], key: str, *, default: float | None = None) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"field {key!r} must be a number")
    try:
        result = float(value)
    except OverflowError:  # a JSON integer too large for a float
        raise _invalid(f"field {key!r} is out of range") from None
    if not math.isfinite(result):
        raise _invalid(f"field {key!r} must be finite")
    return result


def _opt_float(obj: Mapping[str, Any], key: str) -> float | None:
    return None if obj.get(key) is None else _float(obj, key)


def _bool(obj: Mapping[str, Any], key: str, *, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise _invalid(f"field {key!r} must be a boolean")
    return value


def _ids(obj: Mapping[str, Any]) -> dict[str, str | None]:
    return {
        key: _str(obj, key, optional=True) for key in ("session_id", "attempt_id", "connection_id")
    }


def _str_tuple(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _invalid(f"field {key!r} must be a list of strings")
    return tuple(value)


# --------------------------------------------------------------------------- client decoding


def _decode_start(obj: Mapping[str, Any]) -> StartMessage:
    session_id = validate_session_id(obj.get("session_id"))
    attempt_id = _str(obj, "attempt_id")
    connection_id = _str(obj, "connection_id", optional=True)
    sample_rate = _int(obj, "sample_rate", default=SAMPLE_RATE)
    fmt = _str({"format": obj.get("format", FORMAT)}, "format")
    channels = _int(obj, "channels", default=CHANNELS)
    raw_sources = obj.get("sources")
    sources: tuple[Source, ...] | None = None
    if raw_sources is not None:
        if not isinstance(raw_sources, list) or not raw_sources:
            raise _invalid("sources must be a non-empty list")
        if len(raw_sources) > 2:
            raise _invalid("at most 2 sources")
        normalized = tuple(normalize_source(s) for s in raw_sources)
        if len(set(normalized)) != len(normalized):
            raise _invalid("sources must not repeat")
        sources = normalized
    features = obj.get("client_features")
    if features is not None and not isinstance(features, dict):
        raise _invalid("client_features must be an object")
    if sample_rate != SAMPLE_RATE or fmt != FORMAT or channels != CHANNELS:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_AUDIO_FORMAT,
            f"unsupported audio format {sample_rate} Hz / {fmt} / {channels} channel(s): "
            f"expected {SAMPLE_RATE} Hz / {FORMAT} / {CHANNELS} channel",
        )
    return StartMessage(
        session_id=session_id,
        attempt_id=attempt_id,
        connection_id=connection_id,
        sample_rate=sample_rate,
        format=fmt,
        channels=channels,
        sources=sources,
        client_features=features,
    )


def _decode_audio(obj: Mapping[str, Any]) -> AudioMessage:
    source = normalize_source(obj.get("source"))
    data = _str(obj, "data")
    try:
        pcm = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid("audio data is not valid base64") from None
    if len(pcm) % 2:
        raise _invalid("PCM s16le payload must have an even number of bytes")
    return AudioMessage(source=source, pcm=pcm)


def _seconds_map(obj: Mapping[str, Any], key: str) -> dict[str, float]:
    raw = obj.get(key, {})
    if not isinstance(raw, dict):
        raise _invalid(f"field {key!r} must be an object")
    result: dict[str, float] = {}
    for name in raw:
        source = normalize_source(name)
        seconds = _float(raw, name)
        if seconds < 0:
            raise _invalid(f"{key}.{name} must not be negative")
        result[source] = seconds
    return result


def _decode_resume(obj: Mapping[str, Any]) -> ResumeMessage:
    token = _str(obj, "resume_token")
    if not token or len(token) > MAX_RESUME_TOKEN_LEN:
        raise _invalid(f"resume_token must be 1-{MAX_RESUME_TOKEN_LEN} characters")
    return ResumeMessage(
        session_id=validate_session_id(obj.get("session_id")),
        resume_token=token,
        last_segment_id=_str(obj, "last_segment_id", optional=True),
        audio_seconds=_seconds_map(obj, "audio_seconds"),
    )


def decode_client(text: str | bytes) -> ClientMessage:
    """Decode a client → server JSON text message.

    Raises ProtocolError(``invalid_message``) for anything malformed, and
    ProtocolError(``unsupported_audio_format``) for a ``start`` with another format.
    """
    obj = _parse_object(text)
    kind = obj.get("type")
    if kind == "start":
        return _decode_start(obj)
    if kind == "audio":
        return _decode_audio(obj)
    if kind == "stop":
        return StopMessage(session_id=_str(obj, "session_id"))
    if kind == "resume":
        return _decode_resume(obj)
    raise _invalid(f"unknown message type {kind!r}")


# --------------------------------------------------------------------------- server decoding


def _decode_transcript_entry(value: Any) -> TranscriptEntry:
    if not isinstance(value, dict):
        raise _invalid("transcript entries must be objects")
    return TranscriptEntry(
        source=normalize_source(value.get("source")),
        t0=_float(value, "t0"),
        t1=_float(value, "t1"),
        text=_str(value, "text"),
        confidence=_float(value, "confidence", default=0.0),
        segment_id=_str(value, "segment_id"),
    )


def _decode_summary(obj: Mapping[str, Any]) -> FinalSummary:
    transcript = obj.get("transcript", [])
    if not isinstance(transcript, list):
        raise _invalid("transcript must be a list")
    sources_raw = obj.get("sources", {})
    counts_raw = obj.get("counts", {})
    if not isinstance(sources_raw, dict) or not isinstance(counts_raw, dict):
        raise _invalid("sources and counts must be objects")
    sources: dict[str, SourceStats] = {}
    for name, stats in sources_raw.items():
        if not isinstance(stats, dict):
            raise _invalid("per-source stats must be objects")
        sources[name] = SourceStats(
            audio_seconds=_float(stats, "audio_seconds", default=0.0),
            frames_dropped=_int(stats, "frames_dropped", default=0),
        )
    counts = {name: _int(counts_raw, name) for name in counts_raw}
    truncated = obj.get("truncated")
    if truncated is not None and not isinstance(truncated, bool):
        raise _invalid("field 'truncated' must be a boolean")
    return FinalSummary(
        transcript=tuple(_decode_transcript_entry(e) for e in transcript),
        markdown=_str({"m": obj.get("markdown", "")}, "m"),
        sources=sources,
        counts=counts,
        truncated=truncated,
        omitted_finals=_opt_int(obj, "omitted_finals"),
        **_ids(obj),
    )


def _decode_error_code(obj: Mapping[str, Any]) -> ErrorCode:
    code = _str(obj, "code")
    try:
        return ErrorCode(code)
    except ValueError:
        raise _invalid(f"unknown error code {code!r}") from None


def decode_server(text: str | bytes) -> ServerMessage:
    """Decode a server → client JSON text message. Raises only ProtocolError."""
    obj = _parse_object(text)
    kind = obj.get("type")
    if kind == "status":
        state = _str(obj, "state")
        if state not in STATUS_STATES:
            raise _invalid(f"unknown status state {state!r}")
        return StatusMessage(
            state=state,
            message=_str({"m": obj.get("message", "")}, "m"),
            backlog_seconds=_opt_float(obj, "backlog_seconds"),
            dropped_frames=_opt_int(obj, "dropped_frames"),
            degrade_level=_opt_int(obj, "degrade_level"),
            reason=_str(obj, "reason", optional=True),
            resume_token=_str(obj, "resume_token", optional=True),
            resumed=None if obj.get("resumed") is None else _bool(obj, "resumed", default=False),
            audio_seconds=(
                None if obj.get("audio_seconds") is None else _seconds_map(obj, "audio_seconds")
            ),
            **_ids(obj),
        )
    if kind == "asr_partial":
        return AsrPartial(
            source=normalize_source(obj.get("source")),
            text=_str(obj, "text"),
            t0=_float(obj, "t0"),
            t1=_float(obj, "t1"),
            stable=_bool(obj, "stable", default=False),
            **_ids(obj),
        )
    if kind == "asr_final":
        return AsrFinal(
            source=normalize_source(obj.get("source")),
            text=_str(obj, "text"),
            t0=_float(obj, "t0"),
            t1=_float(obj, "t1"),
            confidence=_float(obj, "confidence", default=0.0),
            segment_id=_str(obj, "segment_id"),
            stable=_bool(obj, "stable", default=True),
            **_ids(obj),
        )
    if kind == "metrics":
        return MetricsMessage(
            source=normalize_source(obj.get("source")),
            backlog_seconds=_float(obj, "backlog_seconds", default=0.0),
            queue_fill=_float(obj, "queue_fill", default=0.0),
            dropped_frames=_int(obj, "dropped_frames", default=0),
            realtime_factor=_float(obj, "realtime_factor", default=0.0),
            degrade_level=_int(obj, "degrade_level", default=0),
            active_sessions=_int(obj, "active_sessions", default=0),
            **_ids(obj),
        )
    if kind == "error":
        return ErrorMessage(
            code=_decode_error_code(obj),
            message=_str({"m": obj.get("message", "")}, "m"),
            **_ids(obj),
        )
    if kind == "analysis_update":
        return AnalysisUpdate(
            keywords=_str_tuple(obj, "keywords"),
            topics=_str_tuple(obj, "topics"),
            **_ids(obj),
        )
    if kind == "final_summary":
        return _decode_summary(obj)
    raise _invalid(f"unknown message type {kind!r}")
