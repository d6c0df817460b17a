"""PcmConverter and Framer: any rate/channels → 16 kHz mono s16le, fixed-size frames."""

from __future__ import annotations

import numpy as np
import pytest

from echopanel.capture import Framer, PcmConverter, capture_error, frame_bytes
from echopanel.errors import ErrorCode


def _dominant_hz(pcm: bytes) -> float:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / 16000)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (48000, 1), (16000, 2), (8000, 6)])
def test_converter_outputs_16k_mono_and_keeps_pitch(rate: int, channels: int) -> None:
    t = np.arange(rate) / rate
    block = np.repeat((0.5 * np.sin(2 * np.pi * 440 * t))[:, None], channels, axis=1)
    conv = PcmConverter(rate)
    out = b"".join(conv.push(block[i : i + 1000]) for i in range(0, rate, 1000)) + conv.flush()
    assert abs(len(out) / 2 - 16000) <= 64  # one second, give or take the filter edges
    assert abs(_dominant_hz(out) - 440) < 5
    peak = np.abs(np.frombuffer(out, "<i2")).max()
    assert 0.45 * 32768 < peak < 0.55 * 32768


def test_converter_accepts_int16_and_clips() -> None:
    conv = PcmConverter(16000)
    assert (
        conv.push(np.array([0, 16384, -32768], dtype=np.int16))
        == np.array([0, 16384, -32768], dtype="<i2").tobytes()
    )
    loud = np.frombuffer(conv.push(np.array([2.0, -2.0], dtype=np.float32)), "<i2")
    assert loud.tolist() == [32767, -32768]
    assert conv.flush() == b""


def test_framer_cuts_exact_frames_and_flushes_rest() -> None:
    framer = Framer(frame_bytes(20))
    assert framer.push(b"\x00" * 500) == []
    frames = framer.push(b"\x01" * 1000)
    assert [len(f) for f in frames] == [640, 640]
    assert framer.pending == 220
    assert framer.flush() == [b"\x01" * 220]
    assert framer.flush() == []


@pytest.mark.parametrize("ms", [19, 101, 0])
def test_frame_ms_outside_20_100_is_refused(ms: int) -> None:
    with pytest.raises(ValueError, match="20-100"):
        frame_bytes(ms)


def test_capture_error_codes_carry_reason() -> None:
    err = capture_error("mic", "device busy")
    assert err.code is ErrorCode.MICROPHONE_CAPTURE_FAILED
    assert err.message == "device busy"
    assert capture_error("system", "x").code is ErrorCode.SYSTEM_CAPTURE_FAILED
