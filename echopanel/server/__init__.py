"""The live-listener backend: a Starlette app served by uvicorn.

``create_app(config, asr=...)`` builds the app; ``serve_in_background`` /
``serve_in_thread`` run a real server on a free loopback port (tests, demo, benchmarks);
``run_server`` is what ``echopanel serve`` runs. Importing this package does not import the
Whisper model: ``--asr whisper`` loads it lazily.

The names below are loaded on first use, so that the pure session core
(:mod:`echopanel.server.core`) can be imported without Starlette, uvicorn or anyio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_WHERE: dict[str, str] = {
    "AnalysisResult": "analysis",
    "Analyzer": "analysis",
    "KeywordAnalyzer": "analysis",
    "WS_PATH": "app",
    "build_asr": "app",
    "create_app": "app",
    "server_state": "app",
    "DegradeConfig": "config",
    "ServerConfig": "config",
    "is_loopback": "config",
    "run_server": "runner",
    "serve_in_background": "runner",
    "serve_in_thread": "runner",
    "LocalSlotController": "slots",
    "SlotController": "slots",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'echopanel.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"echopanel.server.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
