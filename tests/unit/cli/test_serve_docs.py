"""Every ``echopanel serve`` option and its environment variable is in docs/configuration.md."""

from __future__ import annotations

import argparse
from pathlib import Path

from echopanel.cli.main import build_parser
from echopanel.server.config import ENV_VARS

DOCS = Path(__file__).resolve().parents[3] / "docs"


def test_every_serve_option_and_variable_is_documented() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = (DOCS / "configuration.md").read_text()
    options = [
        max(action.option_strings, key=len)
        for action in sub.choices["serve"]._actions
        if action.option_strings and action.dest != "help"
    ]
    assert "--drain-timeout" in options and "--allow-origin" in options
    missing = [o for o in options if f"`{o}" not in text]
    missing += [var for var in ENV_VARS.values() if f"`{var}`" not in text]
    assert not missing, f"serve options missing from docs/configuration.md: {missing}"
