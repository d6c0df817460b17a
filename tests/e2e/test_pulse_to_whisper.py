"""System audio from a real (private) PulseAudio sink, through the whole stack.

espeak-ng phrase → ``paplay`` into a null sink → its ``.monitor`` → ``SoundDeviceCapture``
(PortAudio ``pulse`` device) → ``Session`` → WebSocket → ``echopanel serve`` → Whisper →
finals back. ``listen`` runs in a subprocess so PortAudio enumerates with the private
server's environment; Ctrl-C (SIGINT) stops it gracefully: summary, exit 130.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from echopanel.capture.pulse import PulseServer

from ._helpers import PHRASE_WORDS, child_env, cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def _wait_for(
    lines: queue.Queue[str], seen: list[dict[str, Any]], predicate: Any, limit: float
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(json.loads(line))
        if predicate(seen[-1]):
            return
    raise AssertionError(f"timed out; events so far: {[e['event'] for e in seen]}")


def test_spoken_phrase_played_into_sink_is_transcribed(
    pulse: PulseServer, spoken_phrase: Path, whisper_server: str, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        cli("listen", "--url", whisper_server, "--source", "system", "--json",
            "--bundle-dir", str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(**pulse.env),
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    seen: list[dict[str, Any]] = []
    try:
        _wait_for(lines, seen, lambda e: e.get("state") == "listening", 60)
        time.sleep(0.5)
        pulse.play(spoken_phrase, wait=True)

        def heard(event: dict[str, Any]) -> bool:
            text = " ".join(e.get("text", "") for e in seen if e["event"] == "final").lower()
            return all(word in text for word in PHRASE_WORDS)

        _wait_for(lines, seen, heard, 30)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    while not lines.empty():
        seen.append(json.loads(lines.get()))
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert seen[-1]["event"] in ("summary", "state")
    summary = [e for e in seen if e["event"] == "summary"]
    assert summary, [e["event"] for e in seen]
    text = " ".join(t["text"] for t in summary[0]["transcript"]).lower()
    assert all(word in text for word in PHRASE_WORDS), text
    (bundle,) = tmp_path.iterdir()
    receipt = json.loads((bundle / "receipt.json").read_text())
    assert receipt["sources"] == ["system"] and receipt["counts"]["segments"] >= 1
