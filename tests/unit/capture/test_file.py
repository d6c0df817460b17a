"""FileCapture: format conversion, frame sizes, pacing, end of file, failures."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import numpy as np
import pytest
import soundfile

from echopanel.capture import FileCapture
from echopanel.errors import CaptureError, ErrorCode


async def _collect(capture: FileCapture) -> list[bytes]:
    async with capture:
        await capture.start()
        return [frame async for frame in capture.frames()]


async def test_44k_stereo_becomes_16k_mono_s16le_in_fixed_frames(tone_44k_stereo: Path) -> None:
    capture = FileCapture(tone_44k_stereo, realtime=False, frame_ms=40)
    frames = await _collect(capture)
    assert capture.samplerate == 44100 and capture.channels == 2
    assert all(len(f) == 1280 for f in frames[:-1])  # 40 ms of 16 kHz s16le
    assert 0 < len(frames[-1]) <= 1280
    total = sum(len(f) for f in frames) / 2
    assert abs(total - 16000) <= 64
    pcm = np.frombuffer(b"".join(frames), "<i2")
    assert 0.45 * 32768 < np.abs(pcm).max() < 0.55 * 32768


@pytest.mark.parametrize("frame_ms", [20, 50, 100])
async def test_frame_sizes_follow_frame_ms(tone_44k_stereo: Path, frame_ms: int) -> None:
    frames = await _collect(FileCapture(tone_44k_stereo, realtime=False, frame_ms=frame_ms))
    assert {len(f) for f in frames[:-1]} == {32 * frame_ms}


@pytest.mark.parametrize(("fmt", "ext"), [("FLAC", "flac"), ("MP3", "mp3"), ("OGG", "ogg")])
async def test_reads_compressed_formats(
    tmp_path: Path, fmt: str, ext: str, write_tone_file: Callable[..., Path]
) -> None:
    if fmt not in soundfile.available_formats():
        pytest.skip(f"libsndfile without {fmt}")
    path = write_tone_file(tmp_path / f"t.{ext}", seconds=0.5, rate=22050, channels=1, format=fmt)
    frames = await _collect(FileCapture(path, realtime=False))
    seconds = sum(len(f) for f in frames) / 32000
    assert 0.4 < seconds < 0.65  # mp3 adds encoder padding


async def test_realtime_pacing_tracks_the_audio_clock(
    tmp_path: Path, write_tone_file: Callable[..., Path]
) -> None:
    path = write_tone_file(tmp_path / "half.wav", seconds=0.6, rate=16000, channels=1)
    started = time.monotonic()
    await _collect(FileCapture(path, realtime=True))
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 0.9


async def test_speed_factor_and_unpaced_mode(
    tmp_path: Path, write_tone_file: Callable[..., Path]
) -> None:
    path = write_tone_file(tmp_path / "one.wav", seconds=1.0, rate=16000, channels=1)
    started = time.monotonic()
    await _collect(FileCapture(path, realtime=True, speed=4.0))
    assert 0.2 <= time.monotonic() - started < 0.5
    started = time.monotonic()
    await _collect(FileCapture(path, realtime=False))
    assert time.monotonic() - started < 0.3


async def test_stop_ends_the_frame_stream(
    tmp_path: Path, write_tone_file: Callable[..., Path]
) -> None:
    path = write_tone_file(tmp_path / "long.wav", seconds=5.0, rate=16000, channels=1)
    capture = FileCapture(path, realtime=True)
    await capture.start()
    got: list[bytes] = []
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            got.extend([frame async for frame in capture.frames()])

        tg.start_soon(consume)
        await anyio.sleep(0.2)
        await capture.stop()
    assert 0 < sum(len(f) for f in got) / 32000 < 1.0
    await capture.stop()  # idempotent


@pytest.mark.parametrize(
    ("source", "code"),
    [
        ("system", ErrorCode.SYSTEM_CAPTURE_FAILED),
        ("mic", ErrorCode.MICROPHONE_CAPTURE_FAILED),
    ],
)
async def test_missing_file_is_a_capture_error_with_reason(
    tmp_path: Path, source: str, code: ErrorCode
) -> None:
    capture = FileCapture(tmp_path / "nope.wav", source)  # type: ignore[arg-type]
    with pytest.raises(CaptureError) as info:
        await capture.start()
    assert info.value.code is code
    assert "nope.wav" in info.value.message


async def test_not_audio_is_a_capture_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("not audio at all")
    with pytest.raises(CaptureError) as info:
        await FileCapture(path).start()
    assert info.value.code is ErrorCode.SYSTEM_CAPTURE_FAILED
    assert "notes.wav" in info.value.message


async def test_frames_before_start_and_twice_are_refused(tone_44k_stereo: Path) -> None:
    capture = FileCapture(tone_44k_stereo, realtime=False)
    with pytest.raises(CaptureError):
        async for _ in capture.frames():
            pass
    with pytest.raises(RuntimeError, match="once"):
        async for _ in capture.frames():
            pass


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        FileCapture("x.wav", "speaker")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FileCapture("x.wav", speed=0)
    with pytest.raises(ValueError):
        FileCapture("x.wav", frame_ms=10)
