"""``ResumableSessions``: the sessions of one server that a ``resume`` may re-attach.

A session is listed from its ``status: streaming`` (when it issued a resume token) until
its connection object has ended. Lookup is by ``session_id``; the ids are client-made and
may repeat, so each id maps to every such session, and the session's own core decides
(the token, compared in constant time): a ``session_id`` alone never takes one over.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["ResumableSessions"]

T = TypeVar("T")


class ResumableSessions(Generic[T]):
    """``session_id`` → the live sessions that may be resumed (insertion order kept)."""

    def __init__(self) -> None:
        self._by_id: dict[str, list[T]] = {}

    def add(self, session_id: str, session: T) -> None:
        entries = self._by_id.setdefault(session_id, [])
        if session not in entries:
            entries.append(session)

    def discard(self, session_id: str, session: T) -> None:
        entries = self._by_id.get(session_id)
        if entries is None:
            return
        if session in entries:
            entries.remove(session)
        if not entries:
            del self._by_id[session_id]

    def candidates(self, session_id: str) -> list[T]:
        """The sessions listed under ``session_id``, newest last (a copy)."""
        return list(self._by_id.get(session_id, ()))

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_id.values())
