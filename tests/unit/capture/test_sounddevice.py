"""SoundDeviceCapture against a real private PulseAudio server, failure mapping, overflows."""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from pathlib import Path

import anyio
import attrs
import numpy as np
import pytest

from echopanel.capture import DevicePermissionGate, SoundDeviceCapture, devices
from echopanel.capture._bridge import ThreadBridge
from echopanel.capture.pulse import PulseServer
from echopanel.errors import CaptureError, ErrorCode
from echopanel.ports import PermissionKind


def _dominant_hz(pcm: bytes) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / 16000)[int(np.argmax(spectrum))])


async def _record(capture: SoundDeviceCapture, seconds: float) -> list[bytes]:
    frames: list[bytes] = []
    async for frame in capture.frames():
        frames.append(frame)
        if len(frames) * capture.frame_ms / 1000 >= seconds:
            break
    return frames


async def test_system_capture_records_what_plays_into_the_sink(
    pulse: PulseServer, tmp_path: Path, write_tone_file: Callable[..., Path]
) -> None:
    tone = write_tone_file(tmp_path / "tone.wav", seconds=1.5, rate=48000, channels=2, freq=660)
    async with SoundDeviceCapture("system", frame_ms=40) as capture:
        await capture.start()
        assert capture.choice is not None and capture.choice.pulse_source == pulse.monitor
        player = pulse.play(tone)
        frames = await _record(capture, 2.5)
        await anyio.to_thread.run_sync(player.wait)
    assert {len(f) for f in frames} == {1280}
    pcm = b"".join(frames)
    samples = np.frombuffer(pcm, "<i2")
    loud = np.flatnonzero(np.abs(samples) > 3000)
    assert loud.size > 16000  # at least a second of the tone came through
    assert abs(_dominant_hz(pcm[loud[0] * 2 : loud[-1] * 2]) - 660) < 10
    assert capture.overflows == 0


async def test_named_monitor_and_device_index(pulse: PulseServer) -> None:
    async with SoundDeviceCapture("system", device=pulse.monitor) as capture:
        await capture.start()
        frames = await _record(capture, 0.3)
    assert frames and capture.stream_rate is not None
    assert capture.choice is not None and capture.choice.pulse_source == pulse.monitor


async def test_unknown_device_maps_to_microphone_capture_failed(pulse: PulseServer) -> None:
    capture = SoundDeviceCapture("mic", device="no such microphone")
    with pytest.raises(CaptureError) as info:
        await capture.start()
    assert info.value.code is ErrorCode.MICROPHONE_CAPTURE_FAILED
    assert "no such microphone" in info.value.message
    await capture.stop()


async def test_unknown_monitor_maps_to_system_capture_failed(pulse: PulseServer) -> None:
    with pytest.raises(CaptureError) as info:
        await SoundDeviceCapture("system", device="missing.monitor").start()
    assert info.value.code is ErrorCode.SYSTEM_CAPTURE_FAILED
    assert "missing.monitor" in info.value.message
    assert pulse.monitor in info.value.message  # lists what exists


async def test_no_audio_server_is_a_system_capture_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, portaudio: None
) -> None:
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/nothing")
    monkeypatch.delenv("PULSE_SOURCE", raising=False)
    with pytest.raises(CaptureError) as info:
        await SoundDeviceCapture("system").start()
    assert info.value.code is ErrorCode.SYSTEM_CAPTURE_FAILED
    assert "PulseAudio" in info.value.message


async def test_device_gate_explains_what_exists(pulse: PulseServer) -> None:
    gate = DevicePermissionGate()
    system = await gate.request(PermissionKind.SCREEN_RECORDING)
    assert system.granted and pulse.monitor in system.detail
    mic = await gate.request(PermissionKind.MICROPHONE)
    assert not mic.granted
    assert "no input source" in mic.detail


async def test_device_gate_without_audio_server_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, portaudio: None
) -> None:
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/nothing")
    answer = await DevicePermissionGate().request(PermissionKind.SCREEN_RECORDING)
    assert not answer.granted
    assert "PulseAudio" in answer.detail and "audio-setup" in answer.detail


# ---------------------------------------------------------------- overflows (no device needed)

_OK = types.SimpleNamespace(input_overflow=False)
_OVERFLOW = types.SimpleNamespace(input_overflow=True)


async def test_full_queue_drops_and_counts_without_blocking_the_callback() -> None:
    capture = SoundDeviceCapture("mic", frame_ms=20, queue_ms=100)  # room for 5 blocks
    capture._bridge.bind()
    block = np.zeros((320, 1), dtype=np.float32)
    elapsed: list[float] = []

    def audio_thread() -> None:
        import time

        for _ in range(12):
            t = time.perf_counter()
            capture._callback(block, 320, None, _OK)
            elapsed.append(time.perf_counter() - t)
        capture._callback(block, 320, None, _OVERFLOW)  # dropped too, and PortAudio flagged it

    await anyio.to_thread.run_sync(audio_thread)
    assert capture.overflows == 12 - 5 + 1 + 1
    assert max(elapsed) < 0.01


async def test_bridge_wakes_the_consumer_from_another_thread() -> None:
    bridge: ThreadBridge[int] = ThreadBridge(100)
    bridge.bind()

    def produce() -> None:
        for i in range(50):
            bridge.push(i)
        bridge.finish()

    thread = threading.Thread(target=produce)
    got: list[int] = []
    with anyio.fail_after(5):
        thread.start()
        while batch := await bridge.get_batch():
            got.extend(batch)
    thread.join()
    assert got == list(range(50)) and bridge.dropped == 0


async def test_stream_dying_is_reported_by_frames() -> None:
    capture = SoundDeviceCapture("system")
    capture._bridge.bind()
    capture._started = True
    capture._callback(np.zeros((640, 2), dtype=np.float32), 640, None, _OK)
    capture._finished_callback()  # PortAudio stopped on its own
    with pytest.raises(CaptureError) as info:
        async for _ in capture.frames():
            pass
    assert info.value.code is ErrorCode.SYSTEM_CAPTURE_FAILED
    assert "stopped unexpectedly" in info.value.message


async def test_stalled_device_is_reported() -> None:
    capture = SoundDeviceCapture("mic", stall_timeout=0.1)
    capture._bridge.bind()
    capture._started = True
    with pytest.raises(CaptureError, match="no audio from the device"):
        async for _ in capture.frames():
            pass


async def test_stop_while_the_device_is_opening_releases_the_stream(pulse: PulseServer) -> None:
    """``stop()`` (the session tearing down) while ``start()`` is still opening the device
    in its worker thread: the stream opened afterwards is closed, not left running."""
    capture = SoundDeviceCapture("system")
    opening, release = threading.Event(), threading.Event()
    opened: list[object] = []
    real_open = capture._open

    def slow_open() -> object:
        opening.set()
        release.wait(5)
        stream = real_open()
        opened.append(stream)
        return stream

    capture._open = slow_open  # type: ignore[method-assign]
    result: list[BaseException | None] = []

    async def starter() -> None:
        try:
            await capture.start()
            result.append(None)
        except CaptureError as exc:
            result.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(starter)
            await anyio.to_thread.run_sync(opening.wait)
            await capture.stop()
            release.set()
    (stream,) = opened
    assert stream.closed and not stream.active  # type: ignore[attr-defined]
    assert isinstance(result[0], CaptureError)
    assert result[0].code is ErrorCode.SYSTEM_CAPTURE_FAILED
    await capture.stop()  # still idempotent


async def test_both_sources_at_once_each_hear_their_own_device(
    pulse: PulseServer, tmp_path: Path, write_tone_file: Callable[..., Path]
) -> None:
    """``--source both`` on Linux: PULSE_SOURCE is process-wide, yet two streams opened one
    after the other stay routed to their own PulseAudio source."""
    import os
    import shutil

    pactl = shutil.which("pactl") or "pactl"
    await anyio.run_process(
        [pactl, "load-module", "module-null-sink", "sink_name=mic_sink"],
        env={**os.environ, **pulse.env},
    )
    devices.refresh()
    mic_sink = attrs.evolve(pulse, sink="mic_sink")
    low = write_tone_file(tmp_path / "low.wav", seconds=1.5, rate=48000, channels=2, freq=440)
    high = write_tone_file(tmp_path / "high.wav", seconds=1.5, rate=44100, channels=1, freq=1320)
    system = SoundDeviceCapture("system", frame_ms=40)
    mic = SoundDeviceCapture("mic", device=mic_sink.monitor, frame_ms=40)
    async with system, mic:
        await system.start()
        await mic.start()
        assert system.choice is not None and system.choice.pulse_source == pulse.monitor
        assert mic.choice is not None and mic.choice.pulse_source == mic_sink.monitor
        players = [pulse.play(low), mic_sink.play(high)]
        heard: dict[str, list[bytes]] = {}

        async def record(capture: SoundDeviceCapture) -> None:
            heard[capture.source] = await _record(capture, 2.5)

        async with anyio.create_task_group() as tg:
            tg.start_soon(record, system)
            tg.start_soon(record, mic)
        for player in players:
            await anyio.to_thread.run_sync(player.wait)
    for source, freq in (("system", 440), ("mic", 1320)):
        pcm = b"".join(heard[source])
        samples = np.frombuffer(pcm, "<i2")
        loud = np.flatnonzero(np.abs(samples) > 3000)
        assert loud.size > 16000, source
        assert abs(_dominant_hz(pcm[loud[0] * 2 : loud[-1] * 2]) - freq) < 10, source
