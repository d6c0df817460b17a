"""Silero VAD (the copy that ships inside faster-whisper) as the policy's :class:`Vad`.

The ONNX session is loaded once per process (``faster_whisper.vad.get_vad_model`` is
cached) and shared; each stream holds only the recurrent state of the network (two
128-float vectors) and the last 64 samples of context, so scoring a stream incrementally
gives exactly the probabilities faster-whisper computes over the whole file at once.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from echopanel.errors import AsrError

__all__ = ["FRAME_SAMPLES", "SileroVad", "load_silero"]

FRAME_SAMPLES: Final = 512  # 32 ms at 16 kHz, the window Silero v5/v6 expects
_CONTEXT: Final = 64


def load_silero() -> Any:
    """The process-wide Silero ONNX model; raises AsrError if it cannot be loaded."""
    try:
        from faster_whisper.vad import get_vad_model

        return get_vad_model()
    except Exception as exc:  # onnxruntime missing, asset missing, broken file
        raise AsrError(f"could not load the Silero VAD shipped with faster-whisper: {exc}") from exc


class SileroVad:
    """Speech probability per 32 ms frame of one stream (stateful, cheap, not thread-safe)."""

    frame_samples: int = FRAME_SAMPLES

    def __init__(self, model: Any | None = None) -> None:
        self._model = model if model is not None else load_silero()
        self.reset()

    def reset(self) -> None:
        """Forget the stream (recurrent state and context)."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)

    def speech_probs(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Probabilities for the next ``len(audio) // 512`` frames of the stream."""
        if len(audio) % FRAME_SAMPLES:
            raise ValueError(f"audio must be whole {FRAME_SAMPLES}-sample frames")
        if len(audio) == 0:
            return np.zeros(0, dtype=np.float32)
        frames = np.asarray(audio, dtype=np.float32).reshape(-1, FRAME_SAMPLES)
        contexts = np.concatenate([self._context[None, :], frames[:-1, -_CONTEXT:]], axis=0)
        batch = np.concatenate([contexts, frames], axis=1)
        out, self._h, self._c = self._model.session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = frames[-1, -_CONTEXT:].copy()
        probs: npt.NDArray[np.float32] = np.asarray(out, dtype=np.float32).reshape(-1)
        return probs
