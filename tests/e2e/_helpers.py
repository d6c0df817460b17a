"""Helpers shared by the end-to-end tests: commands, child environments, expected words."""

from __future__ import annotations

import os
import socket
import sys

__all__ = ["JFK_WORDS", "PHRASE", "PHRASE_WORDS", "child_env", "cli", "free_port"]

PHRASE = "please send the quarterly report by friday morning"
PHRASE_WORDS = ("quarterly", "report", "friday")
JFK_WORDS = ("ask not what your country can do for you", "fellow americans")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "echopanel", *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120", **extra}
    env.pop("PULSE_SOURCE", None)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
