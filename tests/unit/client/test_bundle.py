"""SessionBundle: files, contents, atomic writes, zip, opt-in audio, event records."""

from __future__ import annotations

import json
import wave
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from echopanel.client.bundle import (
    SessionBundle,
    default_sessions_dir,
    event_record,
    write_atomic,
)
from echopanel.client.events import (
    ErrorEvent,
    FinalEvent,
    MetricsEvent,
    PartialEvent,
    StateChanged,
    StatusEvent,
)
from echopanel.errors import ErrorCode
from echopanel.ports import Capture
from echopanel.protocol.messages import (
    AsrFinal,
    AsrPartial,
    FinalSummary,
    MetricsMessage,
    Source,
    SourceStats,
    StatusMessage,
    TranscriptEntry,
)


def _state(state: str, previous: str) -> StateChanged:
    return StateChanged(state=state, previous=previous)


def _final(text: str, t0: float, seg: str) -> AsrFinal:
    return AsrFinal(source="system", text=text, t0=t0, t1=t0 + 1, confidence=0.9, segment_id=seg)


def _summary() -> FinalSummary:
    return FinalSummary(
        transcript=(
            TranscriptEntry(
                source="system", t0=0.0, t1=1.0, text="ask not", confidence=0.9, segment_id="a"
            ),
            TranscriptEntry(
                source="system",
                t0=1.0,
                t1=2.0,
                text="what your country",
                confidence=0.8,
                segment_id="b",
            ),
        ),
        markdown="ask not what your country",
        sources={"system": SourceStats(audio_seconds=11.0, frames_dropped=3)},
        counts={"finals": 2},
        connection_id="c-1",
    )


def _run_session(bundle: SessionBundle, *, summary: FinalSummary | None = None) -> None:
    bundle.open(session_id="s/1 x", attempt_id="a-1", sources=("system",), started_at=100.0)
    bundle.record(_state("starting", "idle"), 100.0)
    bundle.record(StatusEvent(message=StatusMessage(state="streaming")), 100.2)
    bundle.record(_state("listening", "starting"), 100.2)
    bundle.record(
        PartialEvent(message=AsrPartial(source="system", text="ask", t0=0, t1=0.5)),
        101.0,
    )
    bundle.record(FinalEvent(message=_final("ask not", 0.0, "a")), 101.5)
    bundle.record(
        MetricsEvent(message=MetricsMessage(source="system", dropped_frames=2)),
        102.0,
    )
    bundle.record(ErrorEvent(code=ErrorCode.ASR_UNAVAILABLE, message="model gone"), 103.0)
    bundle.close(outcome="done", ended_at=104.5, summary=summary)


def test_folder_has_receipt_events_and_transcript(tmp_path: Path) -> None:
    bundle = SessionBundle(tmp_path)
    _run_session(bundle, summary=_summary())
    folder = bundle.path
    assert folder is not None and folder.is_dir() and folder.parent == tmp_path
    assert folder.name.endswith("_s_1_x")
    assert sorted(p.name for p in folder.iterdir()) == [
        "events.ndjson",
        "receipt.json",
        "transcript.json",
    ]
    receipt = json.loads((folder / "receipt.json").read_text())
    assert receipt["session_id"] == "s/1 x" and receipt["attempt_id"] == "a-1"
    assert receipt["connection_id"] == "c-1"
    assert receipt["sources"] == ["system"]
    assert receipt["outcome"] == "done"
    assert receipt["duration_seconds"] == 4.5
    assert receipt["started_at"] < receipt["ended_at"]
    assert receipt["counts"]["segments"] == 2
    assert receipt["counts"]["partials"] == 1
    assert receipt["counts"]["errors"] == 1
    assert receipt["counts"]["dropped_frames"] == 3
    assert receipt["error"] == {"code": "asr_unavailable", "message": "model gone"}
    assert receipt["states"] == ["starting", "listening"]
    assert receipt["audio_seconds"] == {"system": 11.0}

    events = [json.loads(line) for line in (folder / "events.ndjson").read_text().splitlines()]
    assert [e["event"] for e in events] == ["state", "status", "state", "final", "metrics", "error"]
    assert events[0]["t"] == 0.0 and events[1]["t"] == 0.2
    assert all(e["ts"] > 1e9 for e in events)
    assert events[1]["state"] == "streaming"
    assert events[3]["text"] == "ask not" and events[3]["segment_id"] == "a"
    assert events[5] == {**events[5], "code": "asr_unavailable", "message": "model gone"}

    transcript = json.loads((folder / "transcript.json").read_text())
    assert [f["text"] for f in transcript["finals"]] == ["ask not", "what your country"]
    assert transcript["text"] == "ask not what your country"


def test_transcript_falls_back_to_received_finals(tmp_path: Path) -> None:
    bundle = SessionBundle(tmp_path)
    _run_session(bundle, summary=None)
    assert bundle.path is not None
    transcript = json.loads((bundle.path / "transcript.json").read_text())
    assert [f["text"] for f in transcript["finals"]] == ["ask not"]
    receipt = json.loads((bundle.path / "receipt.json").read_text())
    assert receipt["counts"]["segments"] == 1 and receipt["counts"]["dropped_frames"] == 2


def test_receipt_exists_while_running_and_events_only_as_part(tmp_path: Path) -> None:
    bundle = SessionBundle(tmp_path)
    bundle.open(session_id="s", attempt_id="a", sources=("mic",), started_at=0.0)
    bundle.record(_state("starting", "idle"), 0.1)
    bundle.flush()  # the line is written by the bundle's writer thread
    folder = bundle.directory
    assert folder is not None
    assert json.loads((folder / "receipt.json").read_text())["outcome"] == "running"
    assert not (folder / "events.ndjson").exists()
    assert (folder / "events.ndjson.part").read_text().count("\n") == 1  # whole lines, flushed
    bundle.close(outcome="error", ended_at=1.0, summary=None)
    assert not (folder / "events.ndjson.part").exists()
    assert not list(folder.glob(".*"))  # no temporary files left


def test_no_audio_unless_asked_and_audio_when_asked(tmp_path: Path) -> None:
    class _Frames(Capture):
        source: Source = "mic"

        async def start(self) -> None: ...

        async def frames(self) -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"\x01\x00" * 640

        async def stop(self) -> None: ...

    async def run(bundle: SessionBundle) -> Path:
        capture = bundle.wrap_capture_factory(lambda s: _Frames())("mic")
        bundle.open(session_id="s", attempt_id="a", sources=("mic",), started_at=0.0)
        await capture.start()
        frames = [f async for f in capture.frames()]
        assert len(frames) == 3
        bundle.close(outcome="done", ended_at=1.0, summary=None)
        assert bundle.path is not None
        return bundle.path

    import anyio

    plain = anyio.run(run, SessionBundle(tmp_path / "plain"))
    assert not (plain / "audio").exists()
    kept = anyio.run(run, SessionBundle(tmp_path / "kept", keep_audio=True))
    with wave.open(str(kept / "audio" / "mic.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getnframes()) == (16000, 1, 1920)
    receipt = json.loads((kept / "receipt.json").read_text())
    assert "audio/mic.wav" in receipt["files"]


def test_zip_bundle(tmp_path: Path) -> None:
    bundle = SessionBundle(tmp_path, zip=True)
    _run_session(bundle, summary=_summary())
    assert bundle.path is not None and bundle.path.suffix == ".zip"
    assert [p.name for p in tmp_path.iterdir()] == [bundle.path.name]
    with zipfile.ZipFile(bundle.path) as archive:
        assert sorted(archive.namelist()) == ["events.ndjson", "receipt.json", "transcript.json"]
        assert json.loads(archive.read("receipt.json"))["outcome"] == "done"


def test_location_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ECHOPANEL_SESSIONS_DIR", str(tmp_path / "here"))
    assert default_sessions_dir() == tmp_path / "here"
    assert SessionBundle().root == tmp_path / "here"
    monkeypatch.delenv("ECHOPANEL_SESSIONS_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_sessions_dir() == tmp_path / "xdg" / "echopanel" / "sessions"


def test_two_attempts_of_one_session_get_two_folders(tmp_path: Path) -> None:
    bundle = SessionBundle(tmp_path)
    _run_session(bundle)
    _run_session(bundle)
    assert len(bundle.paths) == 2 and bundle.paths[0] != bundle.paths[1]


def test_write_atomic_leaves_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "x.json"
    write_atomic(target, "old")

    def boom(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_event_record_flattens_wire_messages() -> None:
    record = event_record(
        PartialEvent(message=AsrPartial(source="mic", text="hi", t0=0.0, t1=0.4, session_id="s"))
    )
    assert record == {
        "event": "partial",
        "source": "mic",
        "text": "hi",
        "t0": 0.0,
        "t1": 0.4,
        "stable": False,
        "session_id": "s",
    }
    assert event_record(ErrorEvent(code=ErrorCode.UNAUTHORIZED, message="no")) == {
        "event": "error",
        "code": "unauthorized",
        "message": "no",
    }


def test_a_truncated_or_missing_summary_costs_no_received_final(tmp_path: Path) -> None:
    """The server bounds its summary (``truncated`` + the omitted count): the bundle still
    holds every final the client received, and the receipt says which summary it had."""
    kept = TranscriptEntry(source="system", t0=1.0, t1=2.0, text="later", confidence=1.0,
                           segment_id="b")  # fmt: skip
    for summary, state, omitted in (
        (FinalSummary(transcript=(kept,), truncated=True, omitted_finals=1), "truncated", 1),
        (None, "missing", None),
        (FinalSummary(transcript=(kept,)), "complete", None),
    ):
        bundle = SessionBundle(tmp_path / state)
        bundle.open(session_id="s", attempt_id="a", sources=("system",), started_at=100.0)
        bundle.record(FinalEvent(message=_final("first", 0.0, "a")), 100.5)
        bundle.record(FinalEvent(message=_final("later", 1.0, "b")), 101.0)
        bundle.close(outcome="error:summary_missing", ended_at=102.0, summary=summary)
        assert bundle.path is not None
        transcript = json.loads((bundle.path / "transcript.json").read_text())
        assert [f["segment_id"] for f in transcript["finals"]] == ["a", "b"], state
        receipt = json.loads((bundle.path / "receipt.json").read_text())
        assert receipt["finals"] == {
            "kept": 2,
            "received": 2,
            "in_summary": None if summary is None else 1,
            "summary": state,
            "summary_omitted": omitted,
            "every_received_final_kept": True,
        }
        assert receipt["counts"]["segments"] == 2


def test_finals_only_in_the_summary_are_kept_too(tmp_path: Path) -> None:
    bundle = SessionBundle(tmp_path)
    _run_session(bundle, summary=_summary())  # received "a" live; "b" only in the summary
    assert bundle.path is not None
    receipt = json.loads((bundle.path / "receipt.json").read_text())
    assert receipt["finals"]["kept"] == 2 and receipt["finals"]["received"] == 1
    assert receipt["finals"]["summary"] == "complete"


_KILLED_CLIENT = """
import sys, time
from echopanel.client.bundle import SessionBundle
from echopanel.client.events import FinalEvent, StateChanged
from echopanel.protocol.messages import AsrFinal

bundle = SessionBundle(sys.argv[1], keep_audio=True)
bundle.open(session_id="killed", attempt_id="a-1", sources=("system",), started_at=time.time())
bundle.record(StateChanged(state="listening", previous="starting"), time.time())
for i in range(3):
    final = AsrFinal(source="system", text=f"words {i}", t0=float(i), t1=i + 1.0,
                     confidence=0.9, segment_id=f"s{i}")
    bundle.record(FinalEvent(message=final), time.time())
bundle._write_audio("system", bytes(32000))
bundle.flush()
print("recorded", flush=True)
time.sleep(60)
"""


def _killed_client_bundle(root: Path) -> Path:
    """A real client process records three finals and some audio, then is killed (SIGKILL)."""
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CLIENT, str(root)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "recorded"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert child.stdout is not None
        child.stdout.close()
    (folder,) = root.iterdir()
    receipt = json.loads((folder / "receipt.json").read_text())
    assert receipt["outcome"] == "running" and receipt["writer"]["pid"] == child.pid
    assert receipt["files"] == ["receipt.json", "events.ndjson.part"]  # only what exists
    return folder


def test_the_next_start_recovers_the_bundle_of_a_killed_client(tmp_path: Path) -> None:
    folder = _killed_client_bundle(tmp_path)
    # a line cut by the kill is dropped, the whole ones kept
    with (folder / "events.ndjson.part").open("a") as part:
        part.write('{"event": "final", "text": "cut')
    bundle = SessionBundle(tmp_path)
    bundle.open(session_id="next", attempt_id="a-2", sources=("system",), started_at=200.0)
    bundle.close(outcome="completed", ended_at=201.0, summary=None)
    assert bundle.recovered == [folder]
    receipt = json.loads((folder / "receipt.json").read_text())
    assert receipt["outcome"] == "interrupted" and "writer" not in receipt
    assert receipt["finals"]["kept"] == 3 and receipt["counts"]["segments"] == 3
    assert receipt["states"] == ["listening"] and receipt["ended_at"] >= receipt["started_at"]
    for name in receipt["files"]:
        assert (folder / name).is_file(), name
    assert "audio/system.wav" in receipt["files"]
    transcript = json.loads((folder / "transcript.json").read_text())
    assert [f["text"] for f in transcript["finals"]] == ["words 0", "words 1", "words 2"]
    events = (folder / "events.ndjson").read_text().splitlines()
    assert len(events) == 4 and not (folder / "events.ndjson.part").exists()
    with wave.open(str(folder / "audio" / "system.wav")) as wav:
        assert wav.getframerate() == 16000 and wav.getnframes() == 16000
    # a finished bundle is never touched again
    again = SessionBundle(tmp_path)
    again.open(session_id="third", attempt_id="a-3", sources=("system",), started_at=300.0)
    again.close(outcome="completed", ended_at=301.0, summary=None)
    assert again.recovered == []


def test_a_running_bundle_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    from echopanel.client.bundle import RecoveryError, find_interrupted, recover_bundle

    live = SessionBundle(tmp_path)
    live.open(session_id="live", attempt_id="a", sources=("mic",), started_at=100.0)
    assert live.directory is not None
    assert find_interrupted(tmp_path) == []  # this very process writes it
    with pytest.raises(RecoveryError, match="still being written"):
        recover_bundle(live.directory)
    live.close(outcome="completed", ended_at=101.0, summary=None)
    assert live.path is not None
    with pytest.raises(RecoveryError, match="nothing to recover"):
        recover_bundle(live.path)


def test_bundle_recover_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from echopanel.cli.main import main

    folder = _killed_client_bundle(tmp_path / "sessions")
    assert main(["bundle", "recover", str(tmp_path / "nothing-here")]) == 2
    assert "is not a bundle folder" in capsys.readouterr().err
    assert main(["bundle", "recover", "--bundle-dir", str(tmp_path / "sessions")]) == 0
    assert f"recovered: {folder}" in capsys.readouterr().out
    assert json.loads((folder / "receipt.json").read_text())["outcome"] == "interrupted"
    assert main(["bundle", "recover", str(folder)]) == 2  # already done: said, not redone
    assert "nothing to recover" in capsys.readouterr().err


def test_a_stalled_disk_never_blocks_record_and_costs_no_final(tmp_path: Path) -> None:
    """The writer thread is stuck (a stalled disk): ``record`` and the audio tee keep
    returning at once; what the bounded queue cannot hold is refused and counted; every
    final still reaches ``transcript.json``."""
    import threading

    from echopanel.client._writer import BackgroundWriter

    bundle = SessionBundle(tmp_path, keep_audio=True)
    bundle._writer = BackgroundWriter(limit=8)
    bundle.open(session_id="s", attempt_id="a", sources=("system",), started_at=100.0)
    disk = threading.Event()
    assert bundle._writer.submit(disk.wait, kind="events")  # the disk stalls here

    def record_many() -> None:
        for i in range(40):
            bundle._write_audio("system", bytes(640))
            bundle.record(FinalEvent(message=_final(f"w{i}", float(i), f"s{i}")), 101.0 + i)

    recorder = threading.Thread(target=record_many)
    recorder.start()
    recorder.join(timeout=10)
    stuck = recorder.is_alive()
    disk.set()
    assert not stuck, "record blocked on a stalled writer"
    bundle.close(outcome="completed", ended_at=150.0, summary=None)
    assert bundle.path is not None
    receipt = json.loads((bundle.path / "receipt.json").read_text())
    dropped = receipt["counts"]["bundle_dropped_writes"]
    assert dropped["audio"] > 0 and dropped["events"] > 0
    lines = (bundle.path / "events.ndjson").read_text().splitlines()
    assert len(lines) == 40 - dropped["events"]
    transcript = json.loads((bundle.path / "transcript.json").read_text())
    assert [f["text"] for f in transcript["finals"]] == [f"w{i}" for i in range(40)]
