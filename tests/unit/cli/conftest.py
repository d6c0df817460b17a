"""A scripted real backend (Starlette under uvicorn on loopback) for misbehaviour tests.

It speaks the protocol far enough for a client session (``connected``, the ``streaming``
acknowledgment, finals) and then misbehaves on purpose: ``on_stop="close"`` closes 1000
without a ``final_summary``; ``close_after_frames=N, close_code=C`` closes with ``C`` once
``N`` audio frames arrived (a server restart is 1012).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import uvicorn
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


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, ws="wsproto", lifespan="off", log_level="warning")
    config.log_config = None
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                with anyio.fail_after(10):
                    while not server.started:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                yield f"ws://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


@pytest.fixture
def scripted_backend() -> Callable[..., contextlib.AbstractAsyncContextManager[str]]:
    """``async with scripted_backend(on_stop=…, …) as url``: a misbehaving real backend."""

    def make(**script: Any) -> contextlib.AbstractAsyncContextManager[str]:
        return serve(scripted_app(**script))

    return make
