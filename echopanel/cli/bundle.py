"""``echopanel bundle recover``: make the bundles of killed clients readable.

::

    echopanel bundle recover ~/.local/share/echopanel/sessions/20260125-114313_<id>
    echopanel bundle recover            # every interrupted bundle in the sessions folder

A client killed mid-session (SIGKILL, power loss) leaves its bundle with receipt outcome
``running`` and its events only in ``events.ndjson.part``. ``recover`` turns it into a
readable bundle with outcome ``interrupted`` that keeps every final recorded (the next
``listen`` does the same by itself for the bundles under its ``--bundle-dir``). Exit status:
0 done (also when there was nothing to recover), 2 a path that is not a recoverable bundle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from echopanel.cli.render import print_error_line

__all__ = ["add_parser", "run"]

EXIT_OK = 0
EXIT_USAGE = 2


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bundle",
        help="session bundle tools (recover the bundle of a killed client)",
        description="Session bundle tools.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    recover = actions.add_parser(
        "recover",
        help="turn bundles left 'running' by a killed client into readable ones",
        description="Turn bundles left 'running' by a killed client into readable ones "
        "(outcome 'interrupted', every final kept).",
    )
    recover.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="bundle folders (default: every interrupted bundle under --bundle-dir)",
    )
    recover.add_argument(
        "--bundle-dir",
        type=Path,
        default=None,
        help="where to look without PATH (default: $ECHOPANEL_SESSIONS_DIR or "
        "~/.local/share/echopanel/sessions)",
    )
    recover.add_argument(
        "--force",
        action="store_true",
        help="recover even if the client that writes it seems to be alive",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from echopanel.client.bundle import (
        RecoveryError,
        default_sessions_dir,
        find_interrupted,
        recover_bundle,
    )

    paths: list[Path] = list(args.paths)
    if not paths:
        root = (args.bundle_dir or default_sessions_dir()).expanduser()
        paths = find_interrupted(root)
        if not paths:
            print(f"no interrupted bundle under {root}", file=sys.stderr)
            return EXIT_OK
    status = EXIT_OK
    for path in paths:
        try:
            recovered = recover_bundle(path, force=args.force)
        except RecoveryError as exc:
            print_error_line(str(exc))
            status = EXIT_USAGE
            continue
        except OSError as exc:
            print_error_line(f"could not recover {path}: {exc.strerror or exc}")
            status = EXIT_USAGE
            continue
        print(f"recovered: {recovered} (outcome interrupted)")
    return status
