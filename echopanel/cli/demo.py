"""``echopanel demo``: a whole live session on one machine, nothing to set up.

Starts the backend in-process on a free loopback port with the bundled Whisper tiny.en
model, then streams the bundled recording (``echopanel/data/jfk.flac``, or ``--file``)
through the full client path — :class:`~echopanel.capture.FileCapture` →
:class:`~echopanel.client.Session` → WebSocket → server → Whisper → back — showing the live
transcript, and exits when the recording ends (exit 0). This is the README's run command.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import anyio

from echopanel.cli.listen import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    SessionRun,
    add_session_arguments,
    configure_logging,
    make_bundle,
    run_session,
)
from echopanel.cli.render import print_error_line
from echopanel.errors import AsrError, ErrorCode, SessionStateError, exit_code_for

__all__ = ["add_parser", "run", "sample_path"]


def sample_path() -> Path:
    """The bundled sample recording."""
    return Path(str(resources.files("echopanel") / "data" / "jfk.flac"))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run a live session end to end with an embedded server and a bundled recording",
        description="Start an embedded server with the bundled Whisper tiny.en model and "
        "stream a bundled recording through the full client path, showing the live "
        "transcript.",
    )
    add_session_arguments(parser)
    parser.add_argument(
        "--file", type=Path, default=None, help="stream this audio file instead of the sample"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="playback speed of the recording (1 = real time, the default)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="shorthand for --speed 3 (still paced, so the server drops nothing)",
    )
    parser.add_argument(
        "--asr",
        choices=("whisper", "fake"),
        default="whisper",
        help="speech backend of the embedded server (default: the bundled Whisper tiny.en)",
    )
    parser.add_argument("--model", type=Path, default=None, help="a CTranslate2 Whisper folder")
    return parser


def run(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    path = (args.file or sample_path()).expanduser()
    speed = 3.0 if args.fast else args.speed
    if not speed > 0:
        print_error_line("--speed must be positive")
        return EXIT_USAGE
    try:
        return anyio.run(_main, args, path, speed)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _note(args: argparse.Namespace, text: str) -> None:
    """Progress notes go to stderr, so ``--json`` stdout stays pure JSON lines."""
    print(text, file=sys.stderr, flush=True)


async def _main(args: argparse.Namespace, path: Path, speed: float) -> int:
    from echopanel.capture import GrantingPermissionGate, make_capture_factory
    from echopanel.server import ServerConfig, serve_in_background

    config = ServerConfig(host="127.0.0.1", port=0, asr=args.asr, model_path=args.model)
    started = time.monotonic()
    _note(args, f"echopanel demo: starting an embedded server ({_model_name(args)}) …")
    try:
        async with serve_in_background(config, ready_timeout=180.0) as base_url:
            ws_url = base_url.replace("http://", "ws://", 1)
            _note(
                args,
                f"echopanel demo: server ready at {ws_url} in {time.monotonic() - started:.1f} s; "
                f"streaming {path.name} at {speed:g}x",
            )
            outcome: SessionRun = await run_session(
                url=ws_url,
                sources=("system",),
                capture_factory=make_capture_factory(file=path, realtime=True, speed=speed),
                permission_gate=GrantingPermissionGate(),
                json_mode=args.json,
                bundle=make_bundle(args),
                start_timeout=args.start_timeout,
                title="echopanel demo",
            )
    except AsrError as exc:
        print_error_line(f"the speech model could not be loaded: {exc.message}")
        return exit_code_for(ErrorCode.ASR_UNAVAILABLE)
    except SessionStateError:  # local misuse is a bug, not a server that did not start
        raise
    except (OSError, RuntimeError, TimeoutError) as exc:
        print_error_line(f"the embedded server did not start: {exc}")
        return exit_code_for(ErrorCode.CONNECTION_FAILED)
    _note(args, f"echopanel demo: done in {time.monotonic() - started:.1f} s")
    return outcome.exit_code


def _model_name(args: argparse.Namespace) -> str:
    if args.asr == "fake":
        return "fake ASR"
    return f"Whisper model {args.model}" if args.model else "Whisper tiny.en, bundled"
