"""Fakes for every port, shipped so that apps embedding echopanel can test against them.

``FakeAsrBackend`` (from :mod:`echopanel.testing.asr`) is imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from echopanel.testing.capture import FakeCapture, FakeCaptureFactory, tone_frames
from echopanel.testing.clock import FakeClock
from echopanel.testing.ids import CountingIds, counter_ids
from echopanel.testing.permissions import FakePermissionGate
from echopanel.testing.transport import FakeTransport, FakeTransportFactory

__all__ = [
    "CountingIds",
    "FakeAsrBackend",
    "FakeCapture",
    "FakeCaptureFactory",
    "FakeClock",
    "FakePermissionGate",
    "FakeTransport",
    "FakeTransportFactory",
    "counter_ids",
    "tone_frames",
]

_LAZY = {"FakeAsrBackend": "echopanel.testing.asr"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'echopanel.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
