"""Fixtures shared by the unit test folders (test modules cannot import each other here)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import uvicorn


@contextlib.asynccontextmanager
async def _serve_app(app: Any) -> AsyncIterator[str]:
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
def uvicorn_server() -> Callable[[Any], contextlib.AbstractAsyncContextManager[str]]:
    """``async with uvicorn_server(app) as url``: the ASGI ``app`` under a real uvicorn
    (wsproto, no lifespan) on a free loopback port; ``url`` is ``ws://127.0.0.1:PORT``."""
    return _serve_app
