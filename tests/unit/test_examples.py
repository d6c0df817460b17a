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


_FAKES = _load("testing_with_fakes.py")


@pytest.mark.parametrize("name", sorted(k for k in _FAKES if k.startswith("test_")))
async def test_testing_with_fakes(name: str) -> None:
    test: Callable[[], Any] = _FAKES[name]
    await test()
