"""``CuttingProxy``: a loopback TCP proxy whose connections can be cut, for resume tests.

``async with CuttingProxy(upstream_port) as proxy:`` listens on ``127.0.0.1`` (a free port:
``proxy.port``) and pipes every accepted connection to ``127.0.0.1:upstream_port``.
``await proxy.cut()`` drops every connection open through it, at the TCP level, without a
WebSocket close frame: both ends see an abnormal loss (1006), as on a network blip.
New connections are accepted after a cut. Every copy loop is bounded by its connection.
"""

from __future__ import annotations

import contextlib
from types import TracebackType

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ["CuttingProxy"]

_CHUNK = 65536


class CuttingProxy:
    """A TCP proxy on loopback that can drop every open connection (see the module doc)."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.cuts = 0
        self.accepted = 0
        self._pairs: list[anyio.CancelScope] = []
        self._tg: anyio.abc.TaskGroup | None = None
        self._listener: anyio.abc.Listener[anyio.abc.SocketStream] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> CuttingProxy:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self._listener = listener
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(listener.serve, self._handle)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None and self._listener is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(exc_type, exc, tb)
        await self._listener.aclose()
        return None

    async def cut(self) -> int:
        """Drop every open connection; returns how many were dropped."""
        pairs, self._pairs = self._pairs, []
        for scope in pairs:
            scope.cancel()
        self.cuts += 1
        await anyio.lowlevel.checkpoint()
        return len(pairs)

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.accepted += 1
        with anyio.CancelScope() as scope:
            self._pairs.append(scope)
            try:
                async with (
                    client,
                    await anyio.connect_tcp(*self.upstream) as upstream,
                    anyio.create_task_group() as tg,
                ):
                    tg.start_soon(self._pipe, client, upstream, tg.cancel_scope)
                    tg.start_soon(self._pipe, upstream, client, tg.cancel_scope)
            except OSError:
                pass
            finally:
                with contextlib.suppress(ValueError):
                    self._pairs.remove(scope)

    @staticmethod
    async def _pipe(
        src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, scope: anyio.CancelScope
    ) -> None:
        try:
            while True:
                data = await src.receive(_CHUNK)
                await dst.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        scope.cancel()  # one side ended: end the pair
