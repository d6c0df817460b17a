"""``SessionConfig``: what a client session connects to and captures."""

from __future__ import annotations

import attrs

from echopanel.protocol.messages import Source
from echopanel.session.config import (
    DEFAULT_START_TIMEOUT,
    DEFAULT_STOP_TIMEOUT,
    MachineConfig,
    normalize_sources,
    normalize_url,
)

__all__ = ["SessionConfig"]


@attrs.frozen(kw_only=True)
class SessionConfig:
    """A session's settings.

    ``url`` is ``ws://host:port`` or the full endpoint URL (normalized to
    ``…/ws/live-listener`` when it has no path). ``sources``: ``("system",)``, ``("mic",)``
    or both. ``token`` is sent as ``Authorization: Bearer`` and ``x-echopanel-token``.
    ``start_timeout`` bounds the whole start; ``stop_timeout`` the wait for the final
    summary. ``stop_on_capture_end``: stop gracefully once every capture's stream ends.
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
    stop_on_capture_end: bool = True

    def machine_config(self) -> MachineConfig:
        """The pure machine's view of this config."""
        return MachineConfig(
            url=self.url,
            sources=self.sources,
            token=self.token,
            start_timeout=self.start_timeout,
            stop_timeout=self.stop_timeout,
            stop_on_capture_end=self.stop_on_capture_end,
        )
