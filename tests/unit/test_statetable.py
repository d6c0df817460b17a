"""``echopanel.statetable``: rows, the ``transitions`` runner and Mermaid edges, on a toy table."""

from __future__ import annotations

from typing import Any

from echopanel.statetable import Row, TableRunner, edge_label, mermaid_edges, row, triggers_of

TABLE = (
    row("go", "a", "b", before="prepare", after="went"),
    row("poke", ("a", "b"), None, conditions=("awake",), unless=("busy",), after="poked"),
    row("go", "b", "a"),
)


class Toy:
    """A model: records every callback the table names, in order."""

    state: str

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.sleepy = False

    def record(self, ed: Any) -> None:
        self.calls.append(f"record {ed.event.name}")

    def prepare(self, ed: Any) -> None:
        self.calls.append(f"prepare {ed.kwargs['n']}")

    def went(self, ed: Any) -> None:
        self.calls.append(f"went {self.state}")

    def poked(self, ed: Any) -> None:
        self.calls.append(f"poked in {self.state}")

    def entered(self, ed: Any) -> None:
        self.calls.append(f"entered {self.state}")

    def awake(self, ed: Any) -> bool:
        return not self.sleepy

    def busy(self, ed: Any) -> bool:
        return False


def test_row_takes_one_source_or_many_and_keeps_only_set_actions_in_its_config():
    assert TABLE[0].source == ("a",) and TABLE[1].source == ("a", "b")
    assert TABLE[0].as_config() == {
        "trigger": "go",
        "source": ["a"],
        "dest": "b",
        "conditions": [],
        "unless": [],
        "before": "prepare",
        "after": "went",
    }
    assert "before" not in TABLE[2].as_config() and "after" not in TABLE[2].as_config()
    assert isinstance(TABLE[0], Row)


def test_triggers_in_first_use_order_without_repeats():
    assert triggers_of(TABLE) == ("go", "poke")


def test_runner_accepts_only_rows_of_the_current_state_and_fires_them():
    toy = Toy()
    runner = TableRunner(toy, TABLE, states=("a", "b"), initial="a")
    assert toy.state == "a" and runner.accepts("go") and runner.accepts("poke")
    runner.fire("go", n=7)
    assert toy.state == "b"
    assert toy.calls == ["record go", "prepare 7", "went b"]
    runner.fire("poke")  # internal: the state stays
    assert toy.state == "b" and toy.calls[-2:] == ["record poke", "poked in b"]
    runner.fire("go", n=8)
    assert toy.state == "a"
    assert toy.calls[-1] == "record go"  # the row from b names no action


def test_runner_conditions_decide_whether_a_row_runs():
    toy = Toy()
    toy.sleepy = True
    runner = TableRunner(toy, TABLE, states=("a", "b"), initial="a", on_enter="entered")
    runner.fire("poke")
    assert toy.state == "a" and toy.calls == ["record poke"]  # the condition held it back
    toy.sleepy = False
    runner.fire("poke")
    assert toy.calls[-1] == "poked in a" and "entered a" not in toy.calls  # internal


def test_runner_on_enter_runs_for_every_state_entered():
    toy = Toy()
    runner = TableRunner(toy, TABLE[:1], states=("a", "b"), initial="a", on_enter="entered")
    runner.fire("go", n=1)
    assert toy.calls == ["record go", "prepare 1", "entered b", "went b"]
    assert not runner.accepts("go")  # no row from b


def test_edge_labels_and_internal_rows_drawn_as_self_loops():
    assert edge_label(TABLE[0]) == "go / prepare, went"
    assert edge_label(TABLE[1]) == "poke [awake] [!busy] (internal) / poked"
    assert edge_label(TABLE[2]) == "go"
    assert mermaid_edges(TABLE, lambda r: r.source) == [
        "    a --> b : go / prepare, went",
        "    a --> a : poke [awake] [!busy] (internal) / poked",
        "    b --> b : poke [awake] [!busy] (internal) / poked",
        "    b --> a : go",
    ]
    assert mermaid_edges(TABLE[1:2], lambda r: ["all"]) == [
        "    all --> all : poke [awake] [!busy] (internal) / poked"
    ]
