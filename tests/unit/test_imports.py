"""``import echopanel`` and the pure core load no I/O library (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "anyio",
    "httpx",
    "httpx_ws",
    "sounddevice",
    "ctranslate2",
    "faster_whisper",
    "numpy",
    "starlette",
    "uvicorn",
)


@pytest.mark.parametrize(
    "modules",
    [
        ("echopanel",),
        ("echopanel", "echopanel.session", "echopanel.protocol"),
        ("echopanel.errors", "echopanel.ports", "echopanel.session.diagram"),
        ("echopanel.server.core", "echopanel.server.core.diagram"),
        ("echopanel.statetable",),
    ],
)
def test_pure_core_imports_nothing_heavy(modules):
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_machine_runs_without_heavy_imports():
    code = (
        "import json, sys\n"
        "from echopanel.session import SessionConfig, SessionMachine, StartRequested\n"
        "m = SessionMachine(SessionConfig(url='ws://h:1', sources=('mic',)))\n"
        "m.handle(StartRequested(), 0.0)\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_server_core_runs_without_heavy_imports():
    code = (
        "import json, sys\n"
        "from echopanel.server.core import CoreConfig, Opened, ServerSession\n"
        "s = ServerSession(CoreConfig(), connection_id='c')\n"
        "s.handle(Opened(authorized=True), 0.0)\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []
