"""The committed docs/state-machine.md must be what the table renders today."""

from __future__ import annotations

from pathlib import Path

from echopanel.session import STATES, TRANSITIONS
from echopanel.session.diagram import main, render_document, render_mermaid

DOC = Path(__file__).resolve().parents[3] / "docs" / "state-machine.md"


def test_committed_diagram_matches_table():
    assert DOC.read_text(encoding="utf-8") == render_document(), (
        "docs/state-machine.md is stale: run `python -m echopanel.session.diagram`"
    )


def test_diagram_shows_every_state_step_and_trigger():
    text = render_mermaid()
    for state in STATES:
        assert state in text
    for step in ("permissions", "capture", "connecting", "awaiting_ack"):
        assert f": {step}" in text
    for row in TRANSITIONS:
        assert f": {row.trigger}" in text


def test_main_writes_the_document(tmp_path, capsys):
    target = tmp_path / "sm.md"
    assert main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_document()
    assert "wrote" in capsys.readouterr().out
