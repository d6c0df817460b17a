"""What the client session's and the server core's state tables share.

Both machines declare their graph as a tuple of :class:`Row` (built with :func:`row`), run it
with ``transitions`` through :class:`TableRunner`, and render it as Mermaid edges
(:func:`mermaid_edges`) for the generated diagrams in the docs. Only the tables, their
models and their diagrams' layout differ; this module holds the rest, once.

Pure: no I/O, no clock, no threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs
from transitions import Machine

__all__ = ["Row", "TableRunner", "edge_label", "mermaid_edges", "row", "triggers_of"]


@attrs.frozen(kw_only=True)
class Row:
    """One transition: on ``trigger`` from any of ``source`` to ``dest`` (None: internal).

    ``conditions``, ``unless``, ``before`` (runs before the state changes) and ``after``
    name methods of the machine's private model.
    """

    trigger: str
    source: tuple[str, ...]
    dest: str | None
    conditions: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()
    before: str | None = None
    after: str | None = None

    def as_config(self) -> dict[str, Any]:
        """The row in the dict form ``transitions.Machine`` takes."""
        config: dict[str, Any] = {
            "trigger": self.trigger,
            "source": list(self.source),
            "dest": self.dest,
            "conditions": list(self.conditions),
            "unless": list(self.unless),
        }
        if self.before is not None:
            config["before"] = self.before
        if self.after is not None:
            config["after"] = self.after
        return config


def row(
    trigger: str,
    source: str | tuple[str, ...],
    dest: str | None,
    *,
    before: str | None = None,
    after: str | None = None,
    conditions: tuple[str, ...] = (),
    unless: tuple[str, ...] = (),
) -> Row:
    """A :class:`Row`; ``source`` may be one state name or a tuple of them."""
    sources = (source,) if isinstance(source, str) else source
    return Row(
        trigger=trigger,
        source=sources,
        dest=dest,
        conditions=conditions,
        unless=unless,
        before=before,
        after=after,
    )


def triggers_of(rows: Iterable[Row]) -> tuple[str, ...]:
    """Every trigger of ``rows``, in first-use order."""
    return tuple(dict.fromkeys(r.trigger for r in rows))


class _Model(Protocol):
    state: str


class TableRunner:
    """``rows`` run by ``transitions.Machine`` over ``model``, starting in ``initial``.

    Callbacks get the trigger's keyword arguments as one ``EventData`` (``send_event``) and
    the model's ``record`` runs first for every trigger (``prepare_event``). ``on_enter``, when
    given, names a model method run on entering every state.
    """

    def __init__(
        self,
        model: _Model,
        rows: Iterable[Row],
        *,
        states: Sequence[str],
        initial: str,
        on_enter: str | None = None,
    ) -> None:
        self.model = model
        configs: list[Any] = list(states)
        if on_enter is not None:
            configs = [{"name": name, "on_enter": on_enter} for name in states]
        self._machine = Machine(
            model=model,
            states=configs,
            transitions=[r.as_config() for r in rows],
            initial=initial,
            auto_transitions=False,
            send_event=True,
            prepare_event="record",
        )
        self._triggers = {state: set(self._machine.get_triggers(state)) for state in states}

    def accepts(self, trigger: str) -> bool:
        """Whether the table has a row for ``trigger`` from the model's current state."""
        return trigger in self._triggers[self.model.state]

    def fire(self, trigger: str, **kwargs: Any) -> None:
        """Run ``trigger`` on the model; ``kwargs`` reach the callbacks' ``EventData``."""
        self._machine.events[trigger].trigger(self.model, **kwargs)


def edge_label(r: Row) -> str:
    """A diagram edge's label: ``trigger [condition] [!unless] (internal) / actions``."""
    parts = [r.trigger]
    parts += [f"[{c}]" for c in r.conditions]
    parts += [f"[!{u}]" for u in r.unless]
    if r.dest is None:
        parts.append("(internal)")
    actions = [a for a in (r.before, r.after) if a]
    if actions:
        parts.append("/ " + ", ".join(actions))
    return " ".join(parts)


def mermaid_edges(rows: Iterable[Row], origins: Callable[[Row], Iterable[str]]) -> list[str]:
    """One Mermaid ``stateDiagram-v2`` edge line per row and origin (``origins(row)``).

    An internal row (``dest`` None) is drawn as a self-loop.
    """
    lines = []
    for r in rows:
        label = edge_label(r)
        for origin in origins(r):
            dest = origin if r.dest is None else r.dest
            lines.append(f"    {origin} --> {dest} : {label}")
    return lines
