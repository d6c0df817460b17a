"""Entry point of the ``echopanel`` command: dispatches to one module per subcommand.

Each subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
Exit codes (DESIGN.md): 0 done, 130 stopped by Ctrl-C, 2 usage, 3 backend refused or
unreachable, 4 permission or capture failure, 5 the session streamed but ended incomplete
(connection lost, or no final summary).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

_SUBCOMMANDS = ("serve", "listen", "demo", "bundle")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echopanel", description="Live transcription sessions over WebSocket."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _SUBCOMMANDS:
        module = importlib.import_module(f"echopanel.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    module = importlib.import_module(f"echopanel.cli.{args.command}")
    code: int = module.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
