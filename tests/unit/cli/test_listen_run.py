"""``echopanel listen`` run in-process against a real server (fake ASR): exit codes and output."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from echopanel.cli.main import main
from echopanel.errors import ErrorCode
from echopanel.server import ServerConfig, serve_in_thread


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(ServerConfig(asr="fake", token="secret")) as url:
        yield url.replace("http://", "ws://")


@pytest.fixture
def speech(tmp_path: Path) -> Path:
    rate = 44100
    t = np.arange(int(rate * 2.0)) / rate
    path = tmp_path / "speech.wav"
    soundfile.write(str(path), np.stack([np.sin(2 * np.pi * 300 * t)] * 2, axis=1) * 0.3, rate)
    return path


def _lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_file_source_json_exit_0(
    server: str, speech: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["listen", "--url", server, "--token", "secret", "--source", f"file:{speech}", "--json",
         "--fast", "--bundle-dir", str(tmp_path / "b")]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    events = _lines(captured.out)
    kinds = {e["event"] for e in events}
    assert {"state", "final", "summary"} <= kinds
    assert kinds <= {
        "state",
        "partial",
        "final",
        "status",
        "metrics",
        "analysis",
        "error",
        "summary",
    }
    assert events[0] == {**events[0], "event": "state", "state": "starting"}
    assert "session bundle:" in captured.err
    (bundle,) = (tmp_path / "b").iterdir()
    assert json.loads((bundle / "receipt.json").read_text())["outcome"] == "completed"


def test_live_view_prints_finals_and_summary(
    server: str, speech: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["listen", "--url", f"{server}/ws/live-listener", "--token", "secret",
         "--source", f"file:{speech}", "--fast", "--no-bundle"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "system" in captured.out and "summary" in captured.out


def test_wrong_token_exit_3_one_line(
    server: str, speech: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["listen", "--url", server, "--token", "wrong", "--source", f"file:{speech}", "--json",
         "--no-bundle"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 3
    assert captured.err.count("echopanel: error:") == 1 and "[unauthorized]" in captured.err
    assert "Traceback" not in captured.err
    errors = [e for e in _lines(captured.out) if e["event"] == "error"]
    assert errors[-1]["code"] == "unauthorized"


def test_missing_file_exit_4(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["listen", "--url", server, "--token", "secret", "--source", f"file:{tmp_path}/no.wav",
         "--no-bundle"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 4
    assert err.strip().endswith("[system_capture_failed]") and "no.wav" in err


def test_unknown_microphone_exit_4(
    server: str, capsys: pytest.CaptureFixture[str], portaudio: None
) -> None:
    code = main(
        ["listen", "--url", server, "--token", "secret", "--source", "mic",
         "--device", "no such microphone 123", "--no-bundle"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 4, err
    assert "microphone" in err.lower() and "Traceback" not in err


def test_ctrl_c_stops_gracefully_prints_summary_exit_130(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rate = 16000
    long = tmp_path / "long.wav"
    soundfile.write(str(long), np.sin(np.arange(rate * 30) / rate * 2 * np.pi * 200) * 0.3, rate)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code = main(
            ["listen", "--url", server, "--token", "secret", "--source", f"file:{long}",
             "--json", "--no-bundle"]
        )  # fmt: skip
    finally:
        timer.cancel()
    captured = capsys.readouterr()
    assert code == 130, captured.err
    events = _lines(captured.out)
    assert any(e["event"] == "summary" for e in events)
    states = [e["state"] for e in events if e["event"] == "state"]
    assert "finalizing" in states and states[-1] == "idle"
    assert "Traceback" not in captured.err


async def test_second_ctrl_c_aborts_a_stop_that_hangs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """First Ctrl-C: graceful stop; the backend never answers it (summary wait 10 s); the
    second Ctrl-C aborts at once: exit 130, the bundle says ``cancelled``, the connection
    is closed."""
    import time

    import anyio

    import echopanel.client.transport as transport_module
    from echopanel.cli.listen import run_session
    from echopanel.client.bundle import SessionBundle
    from echopanel.testing import FakeCaptureFactory, FakePermissionGate, FakeTransport

    made: list[FakeTransport] = []

    def silent_backend(**_: object) -> FakeTransport:
        made.append(FakeTransport(on_stop="silent"))
        return made[-1]

    monkeypatch.setattr(transport_module, "WebSocketTransport", silent_backend)

    async def ctrl_c_twice() -> None:
        await anyio.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)
        await anyio.sleep(0.5)
        os.kill(os.getpid(), signal.SIGINT)

    bundle = SessionBundle(tmp_path)
    began = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ctrl_c_twice)
        run = await run_session(
            url="ws://127.0.0.1:9",
            sources=("system",),
            capture_factory=FakeCaptureFactory(interval=0.04),
            permission_gate=FakePermissionGate(),
            json_mode=True,
            bundle=bundle,
        )
    assert run.exit_code == 130 and run.interrupted
    assert time.monotonic() - began < 5
    assert made[0].closed
    assert bundle.path is not None
    assert json.loads((bundle.path / "receipt.json").read_text())["outcome"] == "cancelled"


def test_verbose_log_lines_carry_the_session_ids(
    server: str, speech: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """EXT-004: "Session starting", "WebSocket connecting", "Session started" with
    session_id / attempt_id / connection_id — also in what ``--verbose`` prints."""
    import logging

    logger = logging.getLogger("echopanel")
    handlers, level = list(logger.handlers), logger.level
    try:
        code = main(
            ["listen", "--url", server, "--token", "secret", "--source", f"file:{speech}",
             "--fast", "--json", "--no-bundle", "--verbose"]
        )  # fmt: skip
    finally:
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
        logger.setLevel(level)
    err = capsys.readouterr().err
    assert code == 0, err
    lines = {
        name: next(line for line in err.splitlines() if line.endswith(name) or f"{name} " in line)
        for name in ("Session starting", "WebSocket connecting", "Session started")
    }
    for line in lines.values():
        assert "session_id=" in line and "attempt_id=" in line, line
    assert "connection_id=" in lines["Session started"]
    assert "url=ws://" in lines["WebSocket connecting"]


async def test_ctrl_c_stop_swallows_only_a_closed_session_or_a_session_failure() -> None:
    """The graceful stop of the first Ctrl-C ignores a session that already closed
    (``SessionStateError``) or failed (``EchoPanelError``); any other error is a bug and
    propagates (it used to be swallowed with every ``RuntimeError``)."""
    from echopanel.cli.listen import _stop_quietly
    from echopanel.errors import ErrorCode, SessionError, SessionStateError

    class Stopping:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        async def stop(self) -> None:
            raise self.exc

    await _stop_quietly(Stopping(SessionStateError("idle", "stop outside `async with`")))
    await _stop_quietly(Stopping(SessionError(ErrorCode.CONNECTION_FAILED)))
    with pytest.raises(RuntimeError, match="a bug"):
        await _stop_quietly(Stopping(RuntimeError("a bug")))


async def test_no_final_summary_is_its_own_outcome_not_success(
    scripted_backend: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The backend closes (1000) after ``stop`` without a ``final_summary``: an ``error``
    event ``summary_missing``, exit 5, a bundle that says so and keeps the final received."""
    from echopanel.cli.listen import run_session
    from echopanel.client.bundle import SessionBundle
    from echopanel.testing import FakeCaptureFactory, FakePermissionGate, tone_frames

    bundle = SessionBundle(tmp_path)
    async with scripted_backend(on_stop="close") as url:
        run = await run_session(
            url=url,
            sources=("system",),
            capture_factory=FakeCaptureFactory(frames=tone_frames(5), interval=0.02, end=True),
            permission_gate=FakePermissionGate(),
            json_mode=True,
            bundle=bundle,
        )
    assert run.exit_code == 5 and run.summary is None
    assert run.error is not None and run.error[0] is ErrorCode.SUMMARY_MISSING
    captured = capsys.readouterr()
    events = _lines(captured.out)
    assert [e["code"] for e in events if e["event"] == "error"] == ["summary_missing"]
    assert not [e for e in events if e["event"] == "summary"]
    assert "the connection closed first (close 1000" in captured.err
    assert "[summary_missing]" in captured.err
    assert bundle.path is not None
    receipt = json.loads((bundle.path / "receipt.json").read_text())
    assert receipt["outcome"] == "error:summary_missing"
    assert receipt["finals"]["summary"] == "missing"
    assert receipt["finals"]["kept"] == 1 and receipt["finals"]["every_received_final_kept"]
    transcript = json.loads((bundle.path / "transcript.json").read_text())
    assert [f["text"] for f in transcript["finals"]] == ["first words"]


async def test_server_restart_while_streaming_is_connection_lost_not_could_not_connect(
    scripted_backend: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A backend that acknowledged and streamed, then closes 1012 (what uvicorn sends on
    restart): ``connection_lost`` naming the close code, exit 5; never "Could not connect"."""
    from echopanel.cli.listen import run_session
    from echopanel.client.bundle import SessionBundle
    from echopanel.testing import FakeCaptureFactory, FakePermissionGate, tone_frames

    bundle = SessionBundle(tmp_path)
    async with scripted_backend(close_after_frames=5, close_code=1012) as url:
        run = await run_session(
            url=url,
            sources=("system",),
            # live: 10 s of frames, then it would wait (never ends by itself)
            capture_factory=FakeCaptureFactory(frames=tone_frames(500), interval=0.02),
            permission_gate=FakePermissionGate(),
            json_mode=True,
            bundle=bundle,
        )
    assert run.exit_code == 5
    assert run.error is not None and run.error[0] is ErrorCode.CONNECTION_LOST
    captured = capsys.readouterr()
    (error,) = [e for e in _lines(captured.out) if e["event"] == "error"]
    assert error["message"] == "Connection to the backend lost (close 1012, server restarting)"
    assert "Could not connect" not in captured.err and "[connection_lost]" in captured.err
    assert bundle.path is not None
    receipt = json.loads((bundle.path / "receipt.json").read_text())
    assert receipt["outcome"] == "error:connection_lost" and receipt["finals"]["kept"] == 1


def test_token_from_the_environment_and_a_warning_for_token_on_the_command_line(
    server: str, speech: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ECHOPANEL_TOKEN`` authenticates without anything in ``ps``; ``--token`` still works
    (and wins) but warns that other users can read it."""
    monkeypatch.setenv("ECHOPANEL_TOKEN", "secret")
    argv = ["listen", "--url", server, "--source", f"file:{speech}", "--fast", "--json",
            "--no-bundle"]  # fmt: skip
    assert main(argv) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([*argv, "--token", "wrong"]) == 3  # the option wins over the environment
    err = capsys.readouterr().err
    assert "echopanel: warning: --token is visible to other users in `ps`" in err
    assert "ECHOPANEL_TOKEN" in err


async def test_a_summary_the_server_had_to_shorten_still_leaves_every_final_in_the_bundle(
    tmp_path: Path,
) -> None:
    """A real server bounds its ``final_summary`` (``truncated``, ``omitted_finals``): the
    session completes, and the bundle holds every final received, saying the summary was
    truncated."""
    from echopanel.cli.listen import run_session
    from echopanel.client.bundle import SessionBundle
    from echopanel.server import serve_in_background
    from echopanel.testing import FakeCaptureFactory, FakePermissionGate, tone_frames

    config = ServerConfig(asr="fake", max_summary_bytes=4096, max_audio_rate=0, ingest_budget=120.0)
    bundle = SessionBundle(tmp_path)
    async with serve_in_background(config) as base:
        run = await run_session(
            url=base.replace("http://", "ws://", 1),
            sources=("system",),
            # 60 s of audio as fast as the server takes it
            capture_factory=FakeCaptureFactory(
                frames=tone_frames(600, ms=100), interval=0, end=True
            ),
            permission_gate=FakePermissionGate(),
            json_mode=True,
            bundle=bundle,
        )
    assert run.exit_code == 0 and run.summary is not None
    assert run.summary.get("truncated") is True and run.summary["omitted_finals"] > 0
    assert bundle.path is not None
    receipt = json.loads((bundle.path / "receipt.json").read_text())
    finals = receipt["finals"]
    assert finals["summary"] == "truncated"
    assert finals["summary_omitted"] == run.summary["omitted_finals"]
    assert finals["kept"] == finals["received"] == len(run.finals) > finals["in_summary"]
    transcript = json.loads((bundle.path / "transcript.json").read_text())
    assert [f["segment_id"] for f in transcript["finals"]] == [
        f["segment_id"] for f in sorted(run.finals, key=lambda f: f["t0"])
    ]
