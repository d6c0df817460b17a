"""``echopanel serve``: run the live-listener backend under uvicorn.

Every option has an environment variable (``ECHOPANEL_HOST``, ``ECHOPANEL_PORT``,
``ECHOPANEL_TOKEN``, ``ECHOPANEL_MAX_SESSIONS``, ``ECHOPANEL_SLOT_TIMEOUT``,
``ECHOPANEL_START_TIMEOUT``, ``ECHOPANEL_ASR``, ``ECHOPANEL_MODEL``,
``ECHOPANEL_RECORD_DIR``, ``ECHOPANEL_IDLE_TIMEOUT``, ``ECHOPANEL_MAX_AUDIO_RATE``); options
win. Listening off loopback without a token is refused
(exit 2). SIGINT/SIGTERM shut down gracefully (exit 0).
"""

from __future__ import annotations

import argparse
import logging
import os
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
    parser.add_argument("--token", help="shared secret clients must send (or ECHOPANEL_TOKEN)")
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
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from echopanel.errors import AsrError
    from echopanel.server.app import create_app
    from echopanel.server.config import ServerConfig
    from echopanel.server.runner import run_server

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
        )
    except (ValueError, TypeError) as exc:
        print(f"echopanel serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if config.exposed_without_token:
        print(
            f"echopanel serve: refusing to listen on {config.host} without a token; "
            "set --token or ECHOPANEL_TOKEN, or listen on 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    try:
        app = create_app(config)
    except AsrError as exc:
        print(f"echopanel serve: {exc.message}", file=sys.stderr)
        return 3
    run_server(config, app=app, log_level=args.log_level)
    return 0
