"""Error codes and the library's exception tree.

Both sides of the wire use the same machine-readable codes (``ErrorCode``); each code has
one default human message, one WebSocket close code when the server closes because of it,
and one CLI exit class.

Exception tree (errors have a direction: a failure of the peer or of the environment,
which carries a code, or local misuse, which is a bug in the caller)::

    EchoPanelError                 base of every failure the library raises on purpose
    ├── ProtocolError              a message or frame broke the wire protocol (remote misbehaviour)
    ├── TransportError             the connection failed or was closed
    ├── CaptureError               an audio source could not start or died
    ├── PermissionDeniedError      the OS (or the gate) refused a permission
    ├── AsrError                   the speech model could not be loaded or run
    └── SessionError               a session ended in ``error``; carries the code and message

    RuntimeError
    └── SessionStateError          local misuse: a call not allowed in the session's state
                                   (start while active, a call outside ``async with``)

Each ``EchoPanelError`` carries ``code`` (an ``ErrorCode``) and ``message`` (for people).
``SessionStateError`` carries ``state`` and ``what`` and no code: it never reaches the wire;
it stays a ``RuntimeError`` so code written against earlier versions keeps working.
"""

from __future__ import annotations

import enum

__all__ = [
    "CLOSE_CODES",
    "EXIT_CODES",
    "AsrError",
    "CaptureError",
    "EchoPanelError",
    "ErrorCode",
    "PermissionDeniedError",
    "ProtocolError",
    "SessionError",
    "SessionStateError",
    "TransportError",
    "default_message",
    "exit_code_for",
]


class ErrorCode(enum.StrEnum):
    """Machine-readable error codes shared by client and server (DESIGN.md)."""

    UNAUTHORIZED = "unauthorized"
    SERVER_AT_CAPACITY = "server_at_capacity"
    UNSUPPORTED_AUDIO_FORMAT = "unsupported_audio_format"
    INVALID_MESSAGE = "invalid_message"
    START_TIMEOUT = "start_timeout"
    FRAME_TOO_LARGE = "frame_too_large"
    ASR_UNAVAILABLE = "asr_unavailable"
    SCREEN_RECORDING_PERMISSION_REQUIRED = "screen_recording_permission_required"
    MICROPHONE_PERMISSION_REQUIRED = "microphone_permission_required"
    SYSTEM_CAPTURE_FAILED = "system_capture_failed"
    MICROPHONE_CAPTURE_FAILED = "microphone_capture_failed"
    CONNECTION_FAILED = "connection_failed"
    BACKEND_START_TIMEOUT = "backend_start_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    INTERNAL_ERROR = "internal_error"
    RESUME_UNKNOWN = "resume_unknown"
    # client-side outcomes of a session that was streaming (never sent by the server)
    CONNECTION_LOST = "connection_lost"
    SUMMARY_MISSING = "summary_missing"
    RECONNECT_FAILED = "reconnect_failed"


_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.UNAUTHORIZED: "Unauthorized: the backend rejected the token",
    ErrorCode.SERVER_AT_CAPACITY: "Server at capacity",
    ErrorCode.UNSUPPORTED_AUDIO_FORMAT: (
        "Unsupported audio format: the backend accepts 16000 Hz, pcm_s16le, 1 channel"
    ),
    ErrorCode.INVALID_MESSAGE: "Invalid message",
    ErrorCode.START_TIMEOUT: "No start message received in time",
    ErrorCode.FRAME_TOO_LARGE: "Audio frame too large",
    ErrorCode.ASR_UNAVAILABLE: "Speech recognition is unavailable",
    ErrorCode.SCREEN_RECORDING_PERMISSION_REQUIRED: "Screen Recording permission required",
    ErrorCode.MICROPHONE_PERMISSION_REQUIRED: "Microphone permission required",
    ErrorCode.SYSTEM_CAPTURE_FAILED: "System audio capture failed",
    ErrorCode.MICROPHONE_CAPTURE_FAILED: "Microphone capture failed",
    ErrorCode.CONNECTION_FAILED: "Could not connect to the backend",
    ErrorCode.BACKEND_START_TIMEOUT: "Backend did not start streaming within 5 seconds",
    ErrorCode.IDLE_TIMEOUT: "No audio received for too long: the server ended the session",
    ErrorCode.INTERNAL_ERROR: "The server hit an internal error and ended the session",
    ErrorCode.RESUME_UNKNOWN: (
        "The server does not know this session any more; the client starts a new one"
    ),
    ErrorCode.CONNECTION_LOST: "Connection to the backend lost",
    ErrorCode.SUMMARY_MISSING: "No final summary from the backend",
    ErrorCode.RECONNECT_FAILED: "Could not reconnect to the backend in time",
}

#: WebSocket close code the server uses when it closes because of an error.
CLOSE_CODES: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 1008,
    ErrorCode.SERVER_AT_CAPACITY: 1013,
    ErrorCode.UNSUPPORTED_AUDIO_FORMAT: 1003,
    ErrorCode.INVALID_MESSAGE: 1007,
    ErrorCode.START_TIMEOUT: 1008,
    ErrorCode.FRAME_TOO_LARGE: 1009,
    ErrorCode.IDLE_TIMEOUT: 4408,  # application range: its own code (cf. HTTP 408)
    ErrorCode.RESUME_UNKNOWN: 4404,  # application range (cf. HTTP 404)
    ErrorCode.INTERNAL_ERROR: 1011,  # before asr_unavailable: a bare 1011 maps to that
    ErrorCode.ASR_UNAVAILABLE: 1011,
}

#: CLI exit status per error code: 3 backend refused or unreachable, 4 permission or capture,
#: 5 the session streamed but ended incomplete (connection lost, no final summary).
EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 3,
    ErrorCode.SERVER_AT_CAPACITY: 3,
    ErrorCode.UNSUPPORTED_AUDIO_FORMAT: 3,
    ErrorCode.INVALID_MESSAGE: 3,
    ErrorCode.START_TIMEOUT: 3,
    ErrorCode.FRAME_TOO_LARGE: 3,
    ErrorCode.ASR_UNAVAILABLE: 3,
    ErrorCode.CONNECTION_FAILED: 3,
    ErrorCode.BACKEND_START_TIMEOUT: 3,
    ErrorCode.IDLE_TIMEOUT: 3,
    ErrorCode.INTERNAL_ERROR: 3,
    ErrorCode.SCREEN_RECORDING_PERMISSION_REQUIRED: 4,
    ErrorCode.MICROPHONE_PERMISSION_REQUIRED: 4,
    ErrorCode.SYSTEM_CAPTURE_FAILED: 4,
    ErrorCode.MICROPHONE_CAPTURE_FAILED: 4,
    ErrorCode.CONNECTION_LOST: 5,
    ErrorCode.RESUME_UNKNOWN: 5,
    ErrorCode.SUMMARY_MISSING: 5,
    ErrorCode.RECONNECT_FAILED: 5,
}


def default_message(code: ErrorCode) -> str:
    """The one user-visible message for ``code``."""
    return _MESSAGES[code]


def exit_code_for(code: ErrorCode) -> int:
    """CLI exit status for a session that ended with ``code``."""
    return EXIT_CODES[code]


class EchoPanelError(Exception):
    """Base of every error the library raises on purpose."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        self.code = ErrorCode(code)
        self.message = message if message is not None else default_message(self.code)
        super().__init__(f"{self.code.value}: {self.message}")


class ProtocolError(EchoPanelError):
    """A message or frame broke the wire protocol. ``code`` says how."""


class TransportError(EchoPanelError):
    """The connection could not be made, or was closed.

    ``close_code`` is the WebSocket close code when the peer closed, else ``None``.
    """

    def __init__(
        self,
        code: ErrorCode = ErrorCode.CONNECTION_FAILED,
        message: str | None = None,
        *,
        close_code: int | None = None,
    ) -> None:
        super().__init__(code, message)
        self.close_code = close_code


class CaptureError(EchoPanelError):
    """An audio source could not start, or failed while running."""


class PermissionDeniedError(EchoPanelError):
    """A permission needed for a source was refused."""


class AsrError(EchoPanelError):
    """The speech model could not be loaded or run."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.ASR_UNAVAILABLE, message)


class SessionError(EchoPanelError):
    """A session attempt ended in the ``error`` state."""


class SessionStateError(RuntimeError):
    """Local misuse: the call is not allowed in the session's current state."""

    def __init__(self, state: str, what: str) -> None:
        super().__init__(f"cannot {what} in state {state!r}")
        self.state = state
        self.what = what
