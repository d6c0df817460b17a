"""What the machine needs to know about a session: where, which sources, which timeouts.

Also the two pure helpers the shell shares: endpoint URL normalization and auth headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs

from echopanel.errors import ProtocolError
from echopanel.ports import PermissionKind
from echopanel.protocol.messages import ENDPOINT_PATH, Source, normalize_source

__all__ = [
    "DEFAULT_SEND_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_STOP_TIMEOUT",
    "ENDPOINT_PATH",
    "PERMISSION_FOR",
    "ROUTING_KEY_PARAM",
    "SessionConfig",
    "auth_headers",
    "normalize_sources",
    "normalize_url",
    "with_routing_key",
]

DEFAULT_START_TIMEOUT: Final = 5.0
DEFAULT_STOP_TIMEOUT: Final = 10.0
DEFAULT_SEND_TIMEOUT: Final = 10.0
#: The OS permission each source needs (system audio needs screen recording on macOS).
PERMISSION_FOR: Final[Mapping[Source, PermissionKind]] = {
    "system": PermissionKind.SCREEN_RECORDING,
    "mic": PermissionKind.MICROPHONE,
}
_SCHEMES: Final = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
#: Query parameter of the WebSocket URL carrying the session id, so that a load balancer
#: can hash on it and send every attempt of one session to the same replica. The server
#: ignores it.
ROUTING_KEY_PARAM: Final = "session"


def normalize_url(url: str) -> str:
    """``ws://host:port`` → ``ws://host:port/ws/live-listener``; full URLs are kept.

    ``http``/``https`` become ``ws``/``wss``. Raises ``ValueError`` for anything else.
    """
    parts = urlsplit(url.strip())
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(
            f"not a WebSocket URL: {url!r} (unsupported scheme {parts.scheme!r}; "
            "expected ws://host:port)"
        )
    if not parts.netloc:
        raise ValueError(f"not a WebSocket URL: {url!r} (no host; expected ws://host:port)")
    path = parts.path if parts.path not in ("", "/") else ENDPOINT_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def with_routing_key(url: str, session_id: str) -> str:
    """``url`` with ``?session=<session_id>`` (percent-encoded; replaces an earlier one)."""
    parts = urlsplit(url)
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != ROUTING_KEY_PARAM
    ]
    query.append((ROUTING_KEY_PARAM, session_id))
    return urlunsplit(parts._replace(query=urlencode(query)))


def normalize_sources(value: Any) -> tuple[Source, ...]:
    """A non-empty tuple of distinct sources (``microphone`` is accepted for ``mic``)."""
    if isinstance(value, str):
        value = (value,)
    result: list[Source] = []
    for item in value:
        try:
            name = normalize_source(item)
        except ProtocolError as exc:
            raise ValueError(exc.message) from None
        if name in result:
            raise ValueError(f"source {name!r} given twice")
        result.append(name)
    if not result:
        raise ValueError("at least one source is needed")
    return tuple(result)


def auth_headers(token: str | None) -> dict[str, str]:
    """Both auth headers the backend accepts, or none when there is no token."""
    if not token:
        return {}
    return {"Authorization": f"Bearer {token}", "x-echopanel-token": token}


@attrs.frozen(kw_only=True)
class SessionConfig:
    """A session's settings: the pure machine's inputs, and what the client shell runs.

    ``url`` is ``ws://host:port`` or the full endpoint URL (normalized to
    ``…/ws/live-listener`` when it has no path). ``sources``: ``("system",)``, ``("mic",)``
    or both. ``token`` is sent as ``Authorization: Bearer`` and ``x-echopanel-token``.
    ``start_timeout`` bounds the whole start; ``stop_timeout`` the wait for the final
    summary; ``send_timeout`` every write to the connection (a backend that stops reading
    loses the connection after it, instead of blocking the session).
    ``stop_on_capture_end``: stop gracefully once every capture's stream ends.
    """

    url: str = attrs.field(converter=normalize_url)
    sources: tuple[Source, ...] = attrs.field(converter=normalize_sources)
    token: str | None = attrs.field(default=None, repr=lambda t: "None" if t is None else "***")
    start_timeout: float = attrs.field(
        default=DEFAULT_START_TIMEOUT, validator=attrs.validators.gt(0)
    )
    stop_timeout: float = attrs.field(
        default=DEFAULT_STOP_TIMEOUT, validator=attrs.validators.gt(0)
    )
    send_timeout: float = attrs.field(
        default=DEFAULT_SEND_TIMEOUT, validator=attrs.validators.gt(0)
    )
    stop_on_capture_end: bool = True
    #: a lost connection is retried (and the server's session resumed) for this many
    #: seconds before the session ends with ``reconnect_failed`` (0: never reconnect)
    reconnect_window: float = attrs.field(default=60.0, validator=attrs.validators.ge(0))
    #: the first retry waits this long (doubling, with jitter, up to ``reconnect_backoff_max``)
    reconnect_backoff: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    reconnect_backoff_max: float = attrs.field(default=8.0, validator=attrs.validators.gt(0))
    #: seconds of audio per source kept while disconnected (beyond: oldest dropped, counted)
    reconnect_buffer: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))

    @property
    def permissions(self) -> tuple[PermissionKind, ...]:
        """The permissions needed, in the order they are asked (screen, then microphone)."""
        needed = {PERMISSION_FOR[s] for s in self.sources}
        return tuple(
            k for k in (PermissionKind.SCREEN_RECORDING, PermissionKind.MICROPHONE) if k in needed
        )
