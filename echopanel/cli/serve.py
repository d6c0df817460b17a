"""``echopanel serve``: run the live-listener backend under uvicorn.

Every option has an environment variable (``ECHOPANEL_HOST``, ``ECHOPANEL_PORT``,
``ECHOPANEL_TOKEN``, ``ECHOPANEL_MAX_SESSIONS``, ``ECHOPANEL_SLOT_TIMEOUT``,
``ECHOPANEL_START_TIMEOUT``, ``ECHOPANEL_ASR``, ``ECHOPANEL_MODEL``,
``ECHOPANEL_RECORD_DIR``, ``ECHOPANEL_IDLE_TIMEOUT``, ``ECHOPANEL_MAX_AUDIO_RATE``, …);
options win. Listening off loopback without a token is refused (exit 2). ``--token`` is
visible in ``ps``: prefer ``ECHOPANEL_TOKEN`` (a warning says so).
``--ssl-certfile``/``--ssl-keyfile`` serve ``wss://``/``https://`` for off-loopback use.
The first SIGINT/SIGTERM drains (no new sessions, live ones finish within ``--drain-timeout``,
the rest are closed with 1001) and exits 0; a second one forces the exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the transcription backend",
        description="Run the live-listener backend (WebSocket /ws/live-listener, /health, "
        "/metrics). Options default to ECHOPANEL_* environment variables.",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8765)")
    parser.add_argument(
        "--token",
        help="shared secret clients must send; prefer ECHOPANEL_TOKEN: a command-line "
        "argument is visible to every user of the machine (ps)",
    )
    parser.add_argument("--max-sessions", type=int, help="concurrent sessions (default 8)")
    parser.add_argument(
        "--slot-timeout", type=float, help="seconds a start waits for a free slot (default 5)"
    )
    parser.add_argument(
        "--start-timeout", type=float, help="seconds a client has to send start (default 10)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        help="seconds a started session may send no audio before idle_timeout (default 60; "
        "0: never)",
    )
    parser.add_argument(
        "--max-audio-rate",
        type=float,
        help="per source, audio faster than this many times real time is dropped after a "
        "10 s burst (default 2; 0: unbounded)",
    )
    parser.add_argument(
        "--resume-window",
        type=float,
        help="seconds a session whose connection was lost is held for the client to resume "
        "it (default 30; 0: never)",
    )
    parser.add_argument(
        "--asr", choices=("whisper", "fake"), help="speech backend (default whisper)"
    )
    parser.add_argument("--model", dest="model_path", help="CTranslate2 Whisper model directory")
    parser.add_argument("--record-dir", help="write every received frame to per-source WAVs")
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto"), help="Whisper device (default cpu)"
    )
    parser.add_argument(
        "--compute-type", help="CTranslate2 compute type (default int8; 'default': per device)"
    )
    parser.add_argument(
        "--threads", type=int, help="CPU threads for Whisper (default 0: one per core)"
    )
    parser.add_argument(
        "--max-batch", type=int, help="decodes the engine runs together (default 8)"
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        dest="allow_origins",
        metavar="ORIGIN",
        help="a browser origin (scheme://host[:port]) allowed to open the WebSocket besides "
        "the server's own; repeatable (or ECHOPANEL_ALLOW_ORIGINS, space/comma separated)",
    )
    parser.add_argument(
        "--max-pending",
        type=int,
        help="sockets without a session (before start) at once; more get HTTP 503 (default 32)",
    )
    parser.add_argument(
        "--decode-timeout",
        type=float,
        help="seconds one speech decode may take before the session gets asr_unavailable "
        "and the ASR is marked unhealthy (default 30)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        help="on SIGTERM/SIGINT, seconds live sessions get to finish (flush, final summary) "
        "before the rest are closed with 1001; a second signal forces (default 10)",
    )
    parser.add_argument(
        "--ssl-certfile", help="TLS certificate (PEM) for wss:// and https:// (with --ssl-keyfile)"
    )
    parser.add_argument("--ssl-keyfile", help="TLS private key (PEM) for --ssl-certfile")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from echopanel.errors import AsrError
    from echopanel.server.app import create_app
    from echopanel.server.config import ServerConfig, is_loopback
    from echopanel.server.runner import run_server

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.log_level != "debug":  # the state machines log every callback at INFO
        logging.getLogger("transitions").setLevel(logging.WARNING)
    try:
        config = ServerConfig.from_env(
            os.environ,
            host=args.host,
            port=args.port,
            token=args.token,
            max_sessions=args.max_sessions,
            slot_timeout=args.slot_timeout,
            start_timeout=args.start_timeout,
            idle_timeout=args.idle_timeout,
            max_audio_rate=args.max_audio_rate,
            resume_window=args.resume_window,
            asr=args.asr,
            model_path=args.model_path,
            record_dir=args.record_dir,
            device=args.device,
            compute_type=args.compute_type,
            threads=args.threads,
            max_batch=args.max_batch,
            allow_origins=tuple(args.allow_origins) if args.allow_origins else None,
            max_pending=args.max_pending,
            decode_timeout=args.decode_timeout,
            drain_timeout=args.drain_timeout,
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
    except (ValueError, TypeError) as exc:
        print(f"echopanel serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if args.token:
        print(
            "echopanel serve: warning: --token is visible to every user of this machine "
            "(ps, /proc); set ECHOPANEL_TOKEN instead",
            file=sys.stderr,
        )
    if config.ssl_certfile is not None and config.ssl_keyfile is not None:
        try:  # a bad certificate is a usage error, not a traceback at startup
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                config.ssl_certfile, config.ssl_keyfile
            )
        except (OSError, ssl.SSLError) as exc:
            print(f"echopanel serve: cannot use the TLS certificate/key: {exc}", file=sys.stderr)
            return 2
    if config.exposed_without_token:
        print(
            f"echopanel serve: refusing to listen on {config.host} without a token; "
            "set --token or ECHOPANEL_TOKEN, or listen on 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    if not config.tls and not is_loopback(config.host):
        print(
            f"echopanel serve: warning: listening on {config.host} without TLS; the token "
            "and the audio cross the network in clear (use --ssl-certfile/--ssl-keyfile or "
            "a TLS-terminating proxy)",
            file=sys.stderr,
        )
    try:
        app = create_app(config)
    except AsrError as exc:
        print(f"echopanel serve: {exc.message}", file=sys.stderr)
        return 3
    run_server(config, app=app, log_level=args.log_level)
    return 0
