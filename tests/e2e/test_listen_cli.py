"""``echopanel listen`` as a subprocess against ``echopanel serve`` (real Whisper)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from echopanel.cli.demo import sample_path

from ._helpers import JFK_WORDS, child_env, cli, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_file_source_json_ends_at_eof_with_summary(whisper_server: str, tmp_path: Path) -> None:
    done = subprocess.run(
        cli(
            "listen", "--url", whisper_server, "--source", f"file:{sample_path()}",
            "--json", "--bundle-dir", str(tmp_path),
        ),
        capture_output=True, text=True, timeout=180, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    events = _events(done.stdout)
    kinds = [e["event"] for e in events]
    assert {"state", "final", "metrics", "summary"} <= set(kinds)
    assert kinds[-1] in ("summary", "state")
    states = [e["state"] for e in events if e["event"] == "state"]
    assert states[:2] == ["starting", "listening"] or "listening" in states
    text = " ".join(e["text"] for e in events if e["event"] == "final").lower()
    text = text.replace(",", "").replace(".", "")
    assert any(words in text for words in JFK_WORDS), text
    summary = next(e for e in events if e["event"] == "summary")
    assert summary["transcript"] and summary["sources"]["system"]["audio_seconds"] > 10
    # the session bundle
    (bundle,) = tmp_path.iterdir()
    receipt = json.loads((bundle / "receipt.json").read_text())
    assert receipt["outcome"] and receipt["counts"]["segments"] >= 1
    assert receipt["sources"] == ["system"]
    transcript = json.loads((bundle / "transcript.json").read_text())
    assert "country" in transcript["text"].lower()
    assert (bundle / "events.ndjson").read_text().count("\n") >= 3


def test_full_endpoint_url_is_accepted(whisper_server: str, tmp_path: Path) -> None:
    short = tmp_path / "short.flac"
    import soundfile

    data, rate = soundfile.read(str(sample_path()))
    soundfile.write(str(short), data[: int(rate * 4)], rate)
    done = subprocess.run(
        cli(
            "listen", "--url", f"{whisper_server}/ws/live-listener", "--source", f"file:{short}",
            "--json", "--no-bundle",
        ),
        capture_output=True, text=True, timeout=120, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _events(done.stdout)[-1]["event"] in ("summary", "state")


def test_unreachable_backend_is_one_line_and_exit_3(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        cli("listen", "--url", f"ws://127.0.0.1:{port}", "--source", f"file:{sample_path()}",
            "--no-bundle"),
        capture_output=True, text=True, timeout=60, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("echopanel: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr


def test_missing_file_is_a_capture_failure_exit_4(whisper_server: str, tmp_path: Path) -> None:
    done = subprocess.run(
        cli("listen", "--url", whisper_server, "--source", f"file:{tmp_path}/none.wav", "--json",
            "--no-bundle"),
        capture_output=True, text=True, timeout=60, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert "none.wav" in done.stderr and "Traceback" not in done.stderr
    errors = [e for e in _events(done.stdout) if e["event"] == "error"]
    assert errors and errors[-1]["code"] == "system_capture_failed"
