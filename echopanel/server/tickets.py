"""``TicketStore``: short-lived, single-use tickets that let a browser open the WebSocket.

Browsers cannot set headers on a WebSocket upgrade, and a long-lived token put in a URL ends
up in histories, proxies and logs. So the page served at ``/`` exchanges the token once, over
``POST /session-ticket`` with ``Authorization: Bearer``, for a ticket: 32 random bytes
(URL-safe text) valid for one WebSocket upgrade within ``ttl`` seconds (30 by default). The
page sends it as ``?ticket=…`` on ``/ws/live-listener``; the connection redeems it instead of
checking the headers.

The store keeps only SHA-256 digests of live tickets, at most ``capacity`` of them: when full
(after dropping the expired ones) :meth:`TicketStore.issue` raises :class:`TicketStoreFull`
until tickets are redeemed or expire. No I/O; the clock is injected.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Final

__all__ = [
    "DEFAULT_TICKET_CAPACITY",
    "DEFAULT_TICKET_TTL",
    "TICKET_PARAM",
    "TicketStore",
    "TicketStoreFull",
]

#: The WebSocket URL's query parameter that carries a ticket.
TICKET_PARAM: Final = "ticket"
DEFAULT_TICKET_TTL: Final = 30.0
DEFAULT_TICKET_CAPACITY: Final = 256
_MAX_TICKET_CHARS: Final = 128  # a real ticket has 43; anything much longer is not one


class TicketStoreFull(Exception):
    """Too many live tickets; retry once some are used or expired."""


class TicketStore:
    """Issues and redeems tickets: unguessable, expiring after ``ttl`` s, usable once."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TICKET_TTL,
        capacity: int = DEFAULT_TICKET_CAPACITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.ttl = ttl
        self.capacity = capacity
        self._clock = clock
        self._expiry: dict[bytes, float] = {}  # digest -> deadline, in issue order

    def __len__(self) -> int:
        """Live (unexpired, unredeemed) tickets."""
        self._purge(self._clock())
        return len(self._expiry)

    def issue(self) -> str:
        """A new ticket. Raises :class:`TicketStoreFull` when ``capacity`` are live."""
        now = self._clock()
        self._purge(now)
        if len(self._expiry) >= self.capacity:
            raise TicketStoreFull(f"{self.capacity} tickets are live")
        ticket = secrets.token_urlsafe(32)
        self._expiry[_digest(ticket)] = now + self.ttl
        return ticket

    def redeem(self, ticket: str | None) -> bool:
        """True once for a live ticket (it is spent), False for anything else."""
        if not ticket or len(ticket) > _MAX_TICKET_CHARS:
            return False
        deadline = self._expiry.pop(_digest(ticket), None)
        return deadline is not None and self._clock() < deadline

    def _purge(self, now: float) -> None:
        # every ticket lives ``ttl``: issue order is expiry order, so expired ones lead
        for digest, deadline in list(self._expiry.items()):
            if deadline > now:
                break
            del self._expiry[digest]


def _digest(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode("utf-8", "surrogatepass")).digest()
