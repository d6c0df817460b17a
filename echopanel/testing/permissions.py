"""``FakePermissionGate``: scripted permission answers, every request recorded."""

from __future__ import annotations

from collections.abc import Mapping

import anyio

from echopanel.ports import PermissionAnswer, PermissionGate, PermissionKind

__all__ = ["FakePermissionGate"]


class FakePermissionGate(PermissionGate):
    """Answers from ``answers`` (a bool or a full answer per kind), else ``default``.

    ``delay`` seconds pass before each answer; ``hang`` kinds never answer (a dialog nobody
    clicks). ``requests`` lists every kind asked, in order.
    """

    def __init__(
        self,
        answers: Mapping[PermissionKind, bool | PermissionAnswer] | None = None,
        *,
        default: bool = True,
        delay: float = 0.0,
        hang: frozenset[PermissionKind] | set[PermissionKind] = frozenset(),
    ) -> None:
        self.answers = dict(answers or {})
        self.default = default
        self.delay = delay
        self.hang = frozenset(hang)
        self.requests: list[PermissionKind] = []
        self.closed = False

    async def request(self, kind: PermissionKind) -> PermissionAnswer:
        self.requests.append(kind)
        if kind in self.hang:
            await anyio.sleep_forever()
        if self.delay:
            await anyio.sleep(self.delay)
        answer = self.answers.get(kind, self.default)
        if isinstance(answer, PermissionAnswer):
            return answer
        detail = "" if answer else f"{kind.value} permission denied (fake)"
        return PermissionAnswer(granted=answer, detail=detail)

    async def aclose(self) -> None:
        self.closed = True
