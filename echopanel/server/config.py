"""``ServerConfig``: every knob of the backend, with defaults from DESIGN.md.

One frozen value object, built by the ``serve`` command from options and environment
variables (``ECHOPANEL_*``, see :data:`ENV_VARS`) or directly by tests and embedding apps.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs
from attrs import validators as v

__all__ = ["ENV_VARS", "DegradeConfig", "ServerConfig", "is_loopback", "normalize_origin"]

AsrName = Literal["whisper", "fake"]

#: Environment variable for each ``ServerConfig`` field the CLI exposes.
ENV_VARS: Final[dict[str, str]] = {
    "host": "ECHOPANEL_HOST",
    "port": "ECHOPANEL_PORT",
    "token": "ECHOPANEL_TOKEN",
    "max_sessions": "ECHOPANEL_MAX_SESSIONS",
    "slot_timeout": "ECHOPANEL_SLOT_TIMEOUT",
    "start_timeout": "ECHOPANEL_START_TIMEOUT",
    "asr": "ECHOPANEL_ASR",
    "model_path": "ECHOPANEL_MODEL",
    "record_dir": "ECHOPANEL_RECORD_DIR",
    "device": "ECHOPANEL_DEVICE",
    "compute_type": "ECHOPANEL_COMPUTE_TYPE",
    "threads": "ECHOPANEL_THREADS",
    "max_batch": "ECHOPANEL_MAX_BATCH",
    "allow_origins": "ECHOPANEL_ALLOW_ORIGINS",
    "max_pending": "ECHOPANEL_MAX_PENDING",
    "decode_timeout": "ECHOPANEL_DECODE_TIMEOUT",
    "drain_timeout": "ECHOPANEL_DRAIN_TIMEOUT",
    "ssl_certfile": "ECHOPANEL_SSL_CERTFILE",
    "ssl_keyfile": "ECHOPANEL_SSL_KEYFILE",
    "idle_timeout": "ECHOPANEL_IDLE_TIMEOUT",
    "max_audio_rate": "ECHOPANEL_MAX_AUDIO_RATE",
    "resume_window": "ECHOPANEL_RESUME_WINDOW",
}


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case, default port dropped; None when malformed.

    ``null`` (sandboxed pages, ``file:``) stays ``null`` so it can be allowed explicitly.
    """
    origin = origin.strip()
    if origin.lower() == "null":
        return "null"
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (
        scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.username is not None
        or parts.query
        or parts.fragment
    ):
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen(kw_only=True)
class DegradeConfig:
    """The degrade ladder: thresholds on the sliding-window real-time factor (RTF).

    Level 0 normal; 1 longer decode interval; 2 greedy decoding and no partials; 3 also
    sheds audio (the ingest budget shrinks to ``shed_budget``). The level goes up when the
    RTF stays above ``up_rtf`` (or the backlog above ``up_backlog`` of the budget) for
    ``up_hold`` seconds, and down when it stays below ``down_rtf`` (and the backlog below
    ``down_backlog``) for ``down_hold`` seconds.
    """

    window: float = attrs.field(default=10.0, validator=v.gt(0))
    up_rtf: float = attrs.field(default=0.8, validator=v.gt(0))
    down_rtf: float = attrs.field(default=0.4, validator=v.gt(0))
    up_backlog: float = attrs.field(default=0.5, validator=[v.gt(0), v.le(1)])
    down_backlog: float = attrs.field(default=0.2, validator=[v.ge(0), v.le(1)])
    up_hold: float = attrs.field(default=2.0, validator=v.ge(0))
    down_hold: float = attrs.field(default=5.0, validator=v.ge(0))
    base_interval: float = attrs.field(default=0.5, validator=v.gt(0))
    slow_interval: float = attrs.field(default=1.0, validator=v.gt(0))
    beam_size: int = attrs.field(default=1, validator=v.ge(1))
    final_beam_size: int = attrs.field(default=5, validator=v.ge(1))
    shed_budget: float = attrs.field(default=0.5, validator=v.gt(0))
    enabled: bool = True

    def __attrs_post_init__(self) -> None:
        if self.down_rtf >= self.up_rtf:
            raise ValueError("down_rtf must be below up_rtf (hysteresis)")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Configuration of one backend process (see ``echopanel serve --help``)."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8765, validator=[v.ge(0), v.le(65535)])
    token: str | None = attrs.field(default=None, repr=False)
    max_sessions: int = attrs.field(default=8, validator=v.ge(1))
    slot_timeout: float = attrs.field(default=5.0, validator=v.ge(0))
    start_timeout: float = attrs.field(default=10.0, validator=v.gt(0))
    asr: AsrName = attrs.field(default="whisper", validator=v.in_(("whisper", "fake")))
    model_path: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    record_dir: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    flush_timeout: float = attrs.field(default=8.0, validator=v.gt(0))
    ingest_budget: float = attrs.field(default=2.0, validator=v.gt(0))
    metrics_interval: float = attrs.field(default=1.0, validator=v.gt(0))
    analysis_interval: float = attrs.field(default=5.0, validator=v.gt(0))
    analysis_timeout: float = attrs.field(default=2.0, validator=v.gt(0))
    backpressure_interval: float = attrs.field(default=2.0, validator=v.ge(0))
    #: ``status: buffering`` when a source's backlog reaches this fraction of its budget
    #: (before anything is dropped), at most once per ``backpressure_interval`` per source.
    buffering_threshold: float = attrs.field(default=0.5, validator=[v.gt(0), v.le(1)])
    max_invalid_messages: int = attrs.field(default=20, validator=v.ge(0))
    send_timeout: float = attrs.field(default=10.0, validator=v.gt(0))
    degrade: DegradeConfig = attrs.field(factory=DegradeConfig)
    #: Whisper decode engine: ``cpu``, ``cuda`` or ``auto``; a CTranslate2 compute type
    #: (``default`` lets CTranslate2 choose); CPU threads (0: one per core); decodes per batch.
    device: str = attrs.field(default="cpu", validator=v.in_(("cpu", "cuda", "auto")))
    compute_type: str = attrs.field(default="int8", validator=v.min_len(1))
    threads: int = attrs.field(default=0, validator=v.ge(0))
    max_batch: int = attrs.field(default=8, validator=[v.ge(1), v.le(64)])
    #: browser origins (``scheme://host[:port]``) allowed to open the WebSocket besides the
    #: server's own; an upgrade with any other ``Origin`` header gets HTTP 403
    allow_origins: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: live-listener sockets without a session (before ``start`` or waiting for a slot);
    #: one more is refused with HTTP 503 before the upgrade
    max_pending: int = attrs.field(default=32, validator=v.ge(1))
    #: seconds one decode (feed or flush) may take; past it the session gets asr_unavailable,
    #: its slot is released and the ASR is unhealthy until the stuck decode returns
    decode_timeout: float = attrs.field(default=30.0, validator=v.gt(0))
    #: seconds the first SIGTERM/SIGINT waits for live sessions to drain (flush, summary)
    #: before closing the rest with 1001; a second signal forces the exit
    drain_timeout: float = attrs.field(default=10.0, validator=v.ge(0))
    #: TLS for off-loopback use: PEM certificate (chain) and private key, both or neither
    ssl_certfile: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    ssl_keyfile: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    #: a started session with no audio for this many seconds ends with ``idle_timeout``
    #: (0: never)
    idle_timeout: float = attrs.field(default=60.0, validator=v.ge(0))
    #: per source, audio beyond this many seconds per second (after ``audio_burst`` seconds)
    #: is dropped, counted and reported (0: unbounded)
    max_audio_rate: float = attrs.field(default=2.0, validator=v.ge(0))
    audio_burst: float = attrs.field(default=10.0, validator=v.gt(0))
    #: the encoded ``final_summary`` stays below this many bytes (oldest finals left out)
    max_summary_bytes: int = attrs.field(default=2 * 1024 * 1024, validator=v.ge(4096))
    #: seconds a session whose connection was lost abnormally is held (slot and ASR
    #: streams) for a ``resume`` from a client that supports it (0: never)
    resume_window: float = attrs.field(default=30.0, validator=v.ge(0))

    def __attrs_post_init__(self) -> None:
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TLS needs both ssl_certfile and ssl_keyfile")
        for origin in self.allow_origins:
            if normalize_origin(origin) is None:
                raise ValueError(f"allowed origin {origin!r} is not scheme://host[:port] (or null)")

    @property
    def tls(self) -> bool:
        """True when the server speaks TLS (``https://`` / ``wss://``)."""
        return self.ssl_certfile is not None

    @property
    def exposed_without_token(self) -> bool:
        """True when the config would listen off-loopback without a token (refused)."""
        return self.token is None and not is_loopback(self.host)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults, then ``ECHOPANEL_*`` variables, then ``overrides`` (not None)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        casts: dict[str, Any] = {
            "port": int,
            "max_sessions": int,
            "slot_timeout": float,
            "start_timeout": float,
            "threads": int,
            "max_batch": int,
            "allow_origins": lambda raw: tuple(o for o in raw.replace(",", " ").split() if o),
            "max_pending": int,
            "decode_timeout": float,
            "drain_timeout": float,
            "idle_timeout": float,
            "max_audio_rate": float,
        }
        for field, var in ENV_VARS.items():
            raw = env.get(var)
            if raw:
                values[field] = casts.get(field, str)(raw)
        values.update({k: val for k, val in overrides.items() if val is not None})
        return cls(**values)
