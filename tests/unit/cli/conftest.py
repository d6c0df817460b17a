"""A scripted real backend (Starlette under uvicorn on loopback) for misbehaviour tests.

It speaks the protocol far enough for a client session (``connected``, the ``streaming``
acknowledgment, finals) and then misbehaves on purpose: ``on_stop="close"`` closes 1000
without a ``final_summary``; ``close_after_frames=N, close_code=C`` closes with ``C`` once
``N`` audio frames arrived (a server restart is 1012).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from echopanel.protocol import ENDPOINT_PATH


def scripted_app(
    *, on_stop: str = "close", close_after_frames: int | None = None, close_code: int = 1012
) -> Starlette:
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        ids: dict[str, Any] = {"connection_id": "c-scripted"}
        await websocket.send_text(json.dumps({"type": "status", "state": "connected", **ids}))
        frames = 0
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                frames += 1
                if frames == 1:
                    final = {"type": "asr_final", "source": "system", "text": "first words",
                             "t0": 0.0, "t1": 1.0, "stable": True, "confidence": 0.9,
                             "segment_id": "seg-1", **ids}  # fmt: skip
                    await websocket.send_text(json.dumps(final))
                if close_after_frames is not None and frames >= close_after_frames:
                    await websocket.close(close_code)
                    return
                continue
            body = json.loads(message["text"])
            if body["type"] == "start":
                ids.update(session_id=body["session_id"], attempt_id=body["attempt_id"])
                await websocket.send_text(
                    json.dumps({"type": "status", "state": "streaming", **ids})
                )
            elif body["type"] == "stop" and on_stop == "close":
                await websocket.close(1000)
                return

    return Starlette(routes=[WebSocketRoute(ENDPOINT_PATH, live)])


@pytest.fixture
def scripted_backend(
    uvicorn_server: Callable[[Starlette], contextlib.AbstractAsyncContextManager[str]],
) -> Callable[..., contextlib.AbstractAsyncContextManager[str]]:
    """``async with scripted_backend(on_stop=…, …) as url``: a misbehaving real backend."""

    def make(**script: Any) -> contextlib.AbstractAsyncContextManager[str]:
        return uvicorn_server(scripted_app(**script))

    return make
