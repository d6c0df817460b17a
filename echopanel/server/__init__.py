"""The live-listener backend: a Starlette app served by uvicorn.

``create_app(config, asr=...)`` builds the app; ``serve_in_background`` /
``serve_in_thread`` run a real server on a free loopback port (tests, demo, benchmarks);
``run_server`` is what ``echopanel serve`` runs. Importing this package does not import the
Whisper model: ``--asr whisper`` loads it lazily.
"""

from __future__ import annotations

from echopanel.server.analysis import AnalysisResult, Analyzer, KeywordAnalyzer
from echopanel.server.app import WS_PATH, build_asr, create_app, server_state
from echopanel.server.config import DegradeConfig, ServerConfig, is_loopback
from echopanel.server.runner import run_server, serve_in_background, serve_in_thread
from echopanel.server.slots import LocalSlotController, SlotController

__all__ = [
    "WS_PATH",
    "AnalysisResult",
    "Analyzer",
    "DegradeConfig",
    "KeywordAnalyzer",
    "LocalSlotController",
    "ServerConfig",
    "SlotController",
    "build_asr",
    "create_app",
    "is_loopback",
    "run_server",
    "serve_in_background",
    "serve_in_thread",
    "server_state",
]
