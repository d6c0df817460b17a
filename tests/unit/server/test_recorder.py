"""``SessionRecorder``: server-made unique names, never truncating, no paths for clients."""

from __future__ import annotations

import wave

import anyio

from echopanel.server import recorder as recorder_module
from echopanel.server.recorder import SessionRecorder, recording_stem

PCM = bytes(range(256)) * 25  # 0.2 s


async def _record(directory, session_id: str, connection_id: str, frames: int) -> SessionRecorder:
    rec = SessionRecorder(directory, session_id, connection_id)
    for _ in range(frames):
        await rec.write("system", PCM)
    await rec.aclose()
    return rec


def _frames(path) -> bytes:
    with wave.open(str(path)) as wav:
        return wav.readframes(wav.getnframes())


async def test_same_client_ids_make_two_files_and_neither_is_truncated(tmp_path):
    first = await _record(tmp_path, "same", "conn", 15)
    second = await _record(tmp_path, "same", "conn", 1)
    assert first.paths["system"] != second.paths["system"]
    assert _frames(first.paths["system"]) == PCM * 15
    assert _frames(second.paths["system"]) == PCM
    assert len(list(tmp_path.glob("*.wav"))) == 2


def test_stem_is_server_made_and_the_client_id_only_a_safe_suffix():
    stem = recording_stem("../../etc/passwd", now=0)
    assert stem.startswith("19700101T000000Z-") and stem.endswith("-etc_passwd")
    assert "/" not in stem and ".." not in stem
    assert recording_stem("x", now=0) != recording_stem("x", now=0)  # random part
    assert recording_stem("///", now=0).endswith("-session")


async def test_an_existing_file_is_never_overwritten(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(recorder_module, "recording_stem", lambda session_id: "fixed")
    victim = tmp_path / "fixed-system.wav"
    victim.write_bytes(b"precious")
    rec = SessionRecorder(tmp_path, "s", "c")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(rec.run)  # returns when the write fails
            await rec.write("system", PCM)
    await rec.aclose()
    assert victim.read_bytes() == b"precious"
    assert rec.error is not None and rec.error.startswith("recording_failed: ")
    assert str(tmp_path) not in rec.error and "Error" not in rec.error
    assert str(tmp_path) in caplog.text  # the path goes to the server log


async def test_a_failure_message_names_the_cause_without_the_path(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    rec = SessionRecorder(not_a_dir / "rec", "s", "c")
    await rec.write("system", PCM)
    await rec.drain()
    await rec.aclose()
    assert rec.error is not None
    assert "file" not in rec.error and str(tmp_path) not in rec.error
