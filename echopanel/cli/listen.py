"""``echopanel listen``: run one live session against a backend and show the transcript.

::

    echopanel listen --url ws://127.0.0.1:8765 --source system
    ECHOPANEL_TOKEN=T echopanel listen --url ws://host:8765/ws/live-listener --source both --json
    echopanel listen --url ws://127.0.0.1:8765 --source file:meeting.flac

``--source file:PATH`` plays a file as the system source and ends the session at the end of
the file. Ctrl-C stops gracefully (the server flushes and sends its summary); a second
Ctrl-C aborts. Exit status: 0 done, 130 stopped by Ctrl-C, 2 usage, 3 backend refused or
unreachable, 4 permission or capture failure, 5 the session streamed but ended incomplete
(connection lost, or no final summary; the bundle keeps every final received). Errors are
one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs

from echopanel.cli.render import JsonPrinter, LiveView, format_summary, print_error_line
from echopanel.client.bundle import event_name, event_record
from echopanel.errors import (
    EchoPanelError,
    ErrorCode,
    SessionError,
    SessionStateError,
    exit_code_for,
)
from echopanel.protocol.messages import Source

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "SessionRun",
    "SourceSpec",
    "add_parser",
    "add_session_arguments",
    "configure_logging",
    "make_bundle",
    "parse_devices",
    "parse_source",
    "parse_url",
    "positive_seconds",
    "run",
    "run_session",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@attrs.frozen(kw_only=True)
class SourceSpec:
    """What ``--source`` asked for: live ``sources``, or a ``file`` played as ``system``."""

    sources: tuple[Source, ...]
    file: Path | None = None


def parse_source(value: str) -> SourceSpec:
    """``mic`` | ``system`` | ``both`` | ``file:PATH`` (argparse ``type``)."""
    if value.startswith("file:"):
        path = value[len("file:") :]
        if not path:
            raise argparse.ArgumentTypeError("file: needs a path, e.g. file:meeting.flac")
        return SourceSpec(sources=("system",), file=Path(path).expanduser())
    table: dict[str, tuple[Source, ...]] = {
        "mic": ("mic",),
        "microphone": ("mic",),
        "system": ("system",),
        "both": ("system", "mic"),
    }
    if value not in table:
        raise argparse.ArgumentTypeError(
            f"invalid source {value!r}: choose mic, system, both or file:PATH"
        )
    return SourceSpec(sources=table[value])


def parse_url(value: str) -> str:
    """``ws://host:port`` or the full endpoint URL (argparse ``type``: a bad one is a usage
    error, exit 2)."""
    from echopanel.session.config import normalize_url

    try:
        return normalize_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_seconds(value: str) -> float:
    """A finite number of seconds > 0 (argparse ``type``)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {value!r}")
    return seconds


def parse_devices(values: Sequence[str] | None, sources: Sequence[Source]) -> dict[Source, str]:
    """``--device D`` (every selected source) or ``--device SOURCE=D`` (one source)."""
    chosen: dict[Source, str] = {}
    for value in values or ():
        name, sep, device = value.partition("=")
        if sep and name in ("system", "mic", "microphone"):
            source: Source = "mic" if name in ("mic", "microphone") else "system"
            if source not in sources:
                raise ValueError(f"--device {value!r}: source {source!r} is not being captured")
            chosen[source] = device
        else:
            for source in sources:
                chosen[source] = value
    return chosen


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "listen",
        help="run one live transcription session against a backend",
        description="Run one live transcription session against a backend and show the "
        "transcript (partials update in place, finals scroll).",
        epilog="exit status: 0 done, 130 Ctrl-C, 2 usage, 3 backend refused/unreachable, "
        "4 permission or capture failure, 5 connection lost or no final summary",
    )
    add_session_arguments(parser)
    parser.add_argument(
        "--url",
        required=True,
        type=parse_url,
        help="backend: ws://host:port or the full endpoint URL (…/ws/live-listener)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="auth token (default: $ECHOPANEL_TOKEN, which is better: a command-line "
        "argument is visible to other users in `ps`)",
    )
    parser.add_argument(
        "--source",
        type=parse_source,
        default=parse_source("system"),
        metavar="mic|system|both|file:PATH",
        help="what to capture (default: system)",
    )
    parser.add_argument(
        "--device",
        action="append",
        metavar="[SOURCE=]DEVICE",
        help="input device (PortAudio index or name, or a PulseAudio source such as "
        "SINK.monitor); SOURCE= picks one source with --source both; repeatable",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="file: source: send the file as fast as possible instead of in real time",
    )
    return parser


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``listen`` and ``demo``."""
    parser.add_argument("--json", action="store_true", help="print one JSON event per line")
    parser.add_argument(
        "--bundle-dir",
        type=Path,
        default=None,
        help="where session bundles go (default: $ECHOPANEL_SESSIONS_DIR or "
        "~/.local/share/echopanel/sessions)",
    )
    parser.add_argument("--no-bundle", action="store_true", help="write no session bundle")
    parser.add_argument("--zip", action="store_true", help="write the bundle as one .zip")
    parser.add_argument(
        "--keep-audio", action="store_true", help="also keep the audio in the bundle"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log what the session does to stderr"
    )
    parser.add_argument(
        "--start-timeout",
        type=positive_seconds,
        default=5.0,
        help="seconds the backend has to start streaming (default 5)",
    )


# --------------------------------------------------------------------------- running


@attrs.define(eq=False)
class SessionRun:
    """What happened in one CLI session run."""

    exit_code: int = EXIT_OK
    interrupted: bool = False
    error: tuple[ErrorCode, str] | None = None
    summary: dict[str, Any] | None = None
    finals: list[dict[str, Any]] = attrs.Factory(list)
    bundle_path: Path | None = None


_RECORD_ATTRS = frozenset(
    {*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime", "taskName"}
)


class _FieldsFormatter(logging.Formatter):
    """Appends a record's structured fields (``session_id=… attempt_id=…``) to the line."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _RECORD_ATTRS and not key.startswith("_") and value is not None
        )
        return f"{line} {fields}" if fields else line


def configure_logging(verbose: bool) -> None:
    """Library logs go to stderr with ``--verbose``; otherwise nowhere (the command prints
    the one line that matters). A ``NullHandler`` keeps Python's last-resort handler from
    printing warnings; propagation to the root logger is left alone."""
    logger = logging.getLogger("echopanel")
    if verbose:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_FieldsFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    elif not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def make_bundle(args: argparse.Namespace) -> Any:
    """The ``SessionBundle`` the bundle options ask for (None with ``--no-bundle``)."""
    if args.no_bundle:
        return None
    from echopanel.client.bundle import SessionBundle

    return SessionBundle(args.bundle_dir, zip=args.zip, keep_audio=args.keep_audio)


async def run_session(
    *,
    url: str,
    sources: tuple[Source, ...],
    capture_factory: Callable[[Source], Any],
    permission_gate: Any,
    token: str | None = None,
    json_mode: bool = False,
    bundle: Any = None,
    start_timeout: float = 5.0,
    title: str = "echopanel",
) -> SessionRun:
    """Run one session through :class:`echopanel.client.Session` and render it.

    Returns a :class:`SessionRun`; never raises for session failures (they become the
    exit code and one error line).
    """
    from echopanel.client import Session, SessionConfig

    outcome = SessionRun()
    view: Any = JsonPrinter() if json_mode else LiveView(title=title)

    def on_event(event: object) -> None:
        kind = event_name(event)
        if kind in ("error", "summary", "final"):
            record = event_record(event)
            if kind == "error":
                outcome.error = (ErrorCode(record["code"]), str(record.get("message", "")))
            elif kind == "summary":
                outcome.summary = record
            else:
                outcome.finals.append(record)
        view.handle(event)

    if bundle is not None:
        capture_factory = bundle.wrap_capture_factory(capture_factory)
    config = SessionConfig(url=url, sources=sources, token=token, start_timeout=start_timeout)
    session = Session(
        config,
        capture_factory=capture_factory,
        permission_gate=permission_gate,
        recorder=bundle,
        on_event=on_event,
    )

    async def watch_signals(scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if outcome.interrupted:  # second Ctrl-C: abort now
                    scope.cancel()
                    return
                outcome.interrupted = True
                tg.start_soon(_stop_quietly, session)

    with view:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals, tg.cancel_scope)
            async with session:
                try:
                    await session.start()
                    await session.wait_closed()
                except SessionError as exc:
                    outcome.error = (exc.code, exc.message)
                except EchoPanelError as exc:  # an adapter error the shell did not wrap
                    outcome.error = (exc.code, exc.message)
            tg.cancel_scope.cancel()

    if bundle is not None:
        outcome.bundle_path = bundle.path
    if outcome.error is not None:
        code, message = outcome.error
        # after Ctrl-C the status stays 130, but a failure of the graceful stop (no summary)
        # is still said
        outcome.exit_code = EXIT_INTERRUPTED if outcome.interrupted else exit_code_for(code)
        print_error_line(f"{message} [{code.value}]")
    elif outcome.interrupted:
        outcome.exit_code = EXIT_INTERRUPTED
    if not json_mode and (outcome.summary is not None or outcome.error is None):
        view.console.print(format_summary(outcome.summary))
    if outcome.bundle_path is not None:
        print(f"session bundle: {outcome.bundle_path}", file=sys.stderr)
    return outcome


async def _stop_quietly(session: Any) -> None:
    # SessionStateError: the session already closed on its own (outside its ``async with``)
    with contextlib.suppress(EchoPanelError, SessionStateError):
        await session.stop()


TOKEN_ENV = "ECHOPANEL_TOKEN"


def resolve_token(args: argparse.Namespace) -> str | None:
    """``--token``, else ``$ECHOPANEL_TOKEN``. A token on the command line is visible to
    every user of the machine (``ps``, ``/proc/PID/cmdline``): say so, once, on stderr."""
    if args.token is not None:
        print(
            f"echopanel: warning: --token is visible to other users in `ps`; "
            f"set {TOKEN_ENV} instead",
            file=sys.stderr,
        )
        token: str | None = args.token
        return token
    return os.environ.get(TOKEN_ENV) or None


def run(args: argparse.Namespace) -> int:
    configure_logging(args.verbose)
    token = resolve_token(args)
    spec: SourceSpec = args.source
    try:
        devices = parse_devices(args.device, spec.sources)
    except ValueError as exc:
        print_error_line(str(exc))
        return EXIT_USAGE
    if spec.file is not None and devices:
        print_error_line("--device does not apply to a file: source")
        return EXIT_USAGE

    from echopanel.capture import (
        GrantingPermissionGate,
        default_permission_gate,
        make_capture_factory,
    )

    if spec.file is not None:
        factory = make_capture_factory(file=spec.file, realtime=not args.fast)
        gate: Any = GrantingPermissionGate()
    else:
        factory = make_capture_factory(devices=devices)
        gate = default_permission_gate(devices=devices)

    async def main() -> SessionRun:
        return await run_session(
            url=args.url,
            sources=spec.sources,
            capture_factory=factory,
            permission_gate=gate,
            token=token,
            json_mode=args.json,
            bundle=make_bundle(args),
            start_timeout=args.start_timeout,
        )

    try:
        return anyio.run(main).exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
