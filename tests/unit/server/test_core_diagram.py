"""The server-phase diagram in docs/architecture.md must be what the table renders today."""

from __future__ import annotations

from pathlib import Path

import pytest

from echopanel.server.core import PHASES, TRANSITIONS
from echopanel.server.core.diagram import (
    BEGIN,
    END,
    main,
    render_block,
    render_mermaid,
    update_document,
)

DOC = Path(__file__).resolve().parents[3] / "docs" / "architecture.md"


def test_committed_diagram_matches_table():
    text = DOC.read_text(encoding="utf-8")
    assert render_block() in text, (
        "docs/architecture.md is stale: run `python -m echopanel.server.core.diagram`"
    )
    assert update_document(text) == text


def test_diagram_shows_every_phase_and_trigger():
    text = render_mermaid()
    for phase in PHASES:
        assert phase in text
    for row in TRANSITIONS:
        assert f": {row.trigger}" in text


def test_main_rewrites_only_the_block(tmp_path, capsys):
    target = tmp_path / "a.md"
    target.write_text(f"# A\n\n{BEGIN}\nold\n{END}\n\ntail\n", encoding="utf-8")
    assert main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == f"# A\n\n{render_block()}\n\ntail\n"
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no server-phases block"):
        update_document("nothing here")
