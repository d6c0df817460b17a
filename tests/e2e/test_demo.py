"""``echopanel demo`` (the README's run command) as a subprocess: exit 0, transcript shown."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from ._helpers import JFK_WORDS, child_env, cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_demo_streams_the_sample_and_exits_0(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        cli("demo", "--json", "--bundle-dir", str(tmp_path)),
        capture_output=True, text=True, timeout=300, env=child_env(),
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    finals = " ".join(e["text"] for e in events if e["event"] == "final").lower()
    finals = finals.replace(",", "").replace(".", "")
    assert any(words in finals for words in JFK_WORDS), finals
    assert any(e["event"] == "summary" for e in events)
    assert any(e["event"] == "partial" for e in events)
    assert elapsed < 240
    assert len(list(tmp_path.iterdir())) == 1


def test_demo_live_view_prints_the_transcript(tmp_path: Path) -> None:
    done = subprocess.run(
        cli("demo", "--fast", "--bundle-dir", str(tmp_path)),
        capture_output=True, text=True, timeout=300, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout.lower()
    assert "country" in out and "summary" in out
