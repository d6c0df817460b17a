"""docs/errors.md lists every error code with its message and exit status; docs link up."""

from __future__ import annotations

from pathlib import Path

import pytest

from echopanel.errors import EXIT_CODES, ErrorCode, default_message

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_is_documented_with_message_and_exit(code: ErrorCode) -> None:
    rows = [
        line for line in (DOCS / "errors.md").read_text().splitlines()
        if line.startswith(f"| `{code.value}` |")
    ]  # fmt: skip
    assert len(rows) == 1, f"{code.value} missing from docs/errors.md"
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1].startswith(default_message(code))
    assert cells[2] == str(EXIT_CODES[code])


def test_docs_exist_and_architecture_embeds_the_generated_diagram() -> None:
    for name in ("quickstart", "architecture", "protocol", "errors", "configuration",
                 "audio-setup"):  # fmt: skip
        assert (DOCS / f"{name}.md").is_file(), name
    assert "state-machine.md" in (DOCS / "architecture.md").read_text()


@pytest.mark.parametrize("command", ["listen", "demo"])
def test_every_client_option_is_documented(command: str) -> None:
    import argparse

    from echopanel.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = (DOCS / "configuration.md").read_text()
    options = [
        max(action.option_strings, key=len)
        for action in sub.choices[command]._actions
        if action.option_strings and action.dest != "help"
    ]
    assert options
    missing = [o for o in options if f"`{o}" not in text]
    assert not missing, f"{command} options missing from docs/configuration.md: {missing}"
