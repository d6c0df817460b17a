"""Every example in examples/ runs (fast paths: in-process server with the fake ASR)."""

from __future__ import annotations

import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> dict[str, Any]:
    return runpy.run_path(str(EXAMPLES / name), run_name=f"example_{Path(name).stem}")


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "custom_capture.py",
        "embed_with_callbacks.py",
        "testing_with_fakes.py",
    ]


def test_embed_with_callbacks(capsys: pytest.CaptureFixture[str]) -> None:
    example = _load("embed_with_callbacks.py")
    assert example["main"]([]) == 0
    out = capsys.readouterr().out
    assert "note:" in out and "starting → listening → finalizing → idle" in out


def test_custom_capture(capsys: pytest.CaptureFixture[str]) -> None:
    example = _load("custom_capture.py")
    assert example["main"]([]) == 0
    assert "final(s) came back" in capsys.readouterr().out


async def test_custom_capture_close_never_blocks_the_app_thread() -> None:
    """``PushCapture.close()`` runs on the app's audio thread like ``push``: with the queue
    full it must return at once (not wait for the session), and the stream still ends after
    the queued audio."""
    import threading

    import anyio
    import numpy as np

    capture = _load("custom_capture.py")["PushCapture"]("system", 16000)
    await capture.start()
    block = np.zeros((160, 1), dtype=np.float32)
    returned = threading.Event()

    def app_thread() -> None:
        for _ in range(300):  # more than the queue holds
            capture.push(block)
        capture.close()
        returned.set()

    threading.Thread(target=app_thread, daemon=True).start()
    assert await anyio.to_thread.run_sync(returned.wait, 2.0), "close() blocked"
    assert capture.overflows > 0
    with anyio.fail_after(5):
        frames = [frame async for frame in capture.frames()]
    assert frames and sum(map(len, frames)) >= 200 * 160 * 2 - 1280


_FAKES = _load("testing_with_fakes.py")


@pytest.mark.parametrize("name", sorted(k for k in _FAKES if k.startswith("test_")))
async def test_testing_with_fakes(name: str) -> None:
    test: Callable[[], Any] = _FAKES[name]
    await test()
