"""``GuardedAsrBackend``: a decode deadline around the shared ASR backend.

A decode that hangs (a stuck inference thread, a wedged device) must not keep a session's
slot forever nor stall every other session behind the model's decode lock. Every ``feed`` and
``flush`` of a guarded stream runs as a task of the server's own task group while the
session's task waits for it at most ``decode_timeout`` seconds. Past the deadline:

* the session's call raises :class:`~echopanel.errors.AsrError` at once (the connection then
  sends ``asr_unavailable`` and closes 1011, releasing its slot), although the worker thread
  cannot be killed — the call is abandoned and keeps running in the server's task group;
* the backend is marked **unhealthy**: ``ready`` is False (``/health`` says ``unavailable``,
  new sessions get ``asr_unavailable``) and every later call fails fast;
* when every abandoned call has returned, the backend is healthy again (logged).

Any other failure of the inner backend reaches the session as an ``AsrError`` with a fixed
message; the backend's own message (which may name paths or quote an exception) is logged.

A stream closed while one of its calls is still running is closed when that call returns, so
its state is never torn down under a running decode. Without a task group (no lifespan) the
calls run inline with the same deadline (only cancellable backends honour it then).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from echopanel.errors import AsrError
from echopanel.ports import AsrBackend, AsrStream, AsrTuning, AsrUpdate
from echopanel.protocol import Source

__all__ = ["GuardedAsrBackend", "GuardedAsrStream"]

log = logging.getLogger("echopanel.server")


class GuardedAsrBackend(AsrBackend):
    """Wraps a backend; ``on_health(message_or_None)`` hears every health change."""

    def __init__(
        self,
        inner: AsrBackend,
        *,
        decode_timeout: float,
        on_health: Callable[[str | None], None] | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.decode_timeout = decode_timeout
        self.unhealthy: str | None = None
        self.abandoned = 0  # calls past their deadline that have not returned yet
        self.on_health = on_health
        self._tg: anyio.abc.TaskGroup | None = None

    def attach(self, tg: anyio.abc.TaskGroup | None) -> None:
        """The server's task group, where calls run (``None`` detaches)."""
        self._tg = tg

    # ------------------------------------------------------------------ AsrBackend

    @property
    def ready(self) -> bool:
        return self.inner.ready and self.unhealthy is None

    async def load(self) -> None:
        await self.inner.load()

    def open_stream(self, source: Source, *, tuning: AsrTuning | None = None) -> AsrStream:
        if self.unhealthy is not None:
            raise AsrError(self.unhealthy)
        try:
            stream = self.inner.open_stream(source, tuning=tuning)
        except Exception as exc:
            raise _for_clients(exc, f"opening a stream for {source}") from None
        return GuardedAsrStream(stream, self)

    def describe(self) -> Mapping[str, str]:
        return {**dict(self.inner.describe()), "decode_timeout": f"{self.decode_timeout:g}"}

    async def aclose(self) -> None:
        await self.inner.aclose()

    # ------------------------------------------------------------------ the deadline

    async def call(
        self, stream: GuardedAsrStream, fn: Callable[[], Awaitable[list[AsrUpdate]]]
    ) -> list[AsrUpdate]:
        """Run ``fn`` (a call of ``stream``'s inner stream) within the decode deadline."""
        if self.unhealthy is not None:
            raise AsrError(self.unhealthy)
        if self._tg is None:
            try:
                with anyio.fail_after(self.decode_timeout):
                    return await fn()
            except TimeoutError:
                self._hung()
                raise AsrError(self._message()) from None
            except Exception as exc:
                raise _for_clients(exc, "a decode") from None
        done = anyio.Event()
        scope = anyio.CancelScope()
        outcome: list[Any] = []

        async def runner() -> None:
            try:
                with scope:
                    outcome.append(await fn())
            except Exception as exc:
                outcome.append(exc)
            finally:
                done.set()
                await stream.call_ended()

        stream.in_flight += 1
        self._tg.start_soon(runner)
        try:
            with anyio.move_on_after(self.decode_timeout):
                await done.wait()
        except BaseException:  # the session was cancelled: the call is not needed any more
            scope.cancel()
            raise
        if not done.is_set():
            scope.cancel()  # honoured by cancellable backends; a thread runs on regardless
            self._hung()
            self.abandoned += 1
            stream.on_call_end(self._abandoned_returned)
            raise AsrError(self._message())
        if not outcome:  # cancelled from elsewhere (server shutdown)
            raise AsrError("speech recognition was stopped")
        result = outcome[0]
        if isinstance(result, Exception):
            raise _for_clients(result, "a decode") from None
        updates: list[AsrUpdate] = result
        return updates

    def _message(self) -> str:
        return (
            f"a speech decode did not finish within {self.decode_timeout:g} s; "
            "speech recognition is marked unhealthy"
        )

    def _hung(self) -> None:
        if self.unhealthy is None:
            self.unhealthy = self._message()
            log.error("ASR unhealthy: %s", self.unhealthy)
            if self.on_health is not None:
                self.on_health(self.unhealthy)

    def _abandoned_returned(self) -> None:
        self.abandoned -= 1
        if self.abandoned == 0 and self.unhealthy is not None:
            self.unhealthy = None
            log.warning("ASR healthy again: every decode past its deadline has returned")
            if self.on_health is not None:
                self.on_health(None)


def _for_clients(exc: Exception, what: str) -> AsrError:
    """The error a client may see: the backend's own message can name paths or carry an
    exception's text, so it goes to the server log and the client gets a fixed sentence."""
    detail = exc.message if isinstance(exc, AsrError) else f"{type(exc).__name__}: {exc}"
    log.error("ASR failure in %s: %s", what, detail)
    return AsrError("the speech recognizer failed (details are in the server log)")


class GuardedAsrStream(AsrStream):
    """One stream of a :class:`GuardedAsrBackend` (see the module docstring)."""

    def __init__(self, inner: AsrStream, guard: GuardedAsrBackend) -> None:
        self.inner = inner
        self.guard = guard
        self.in_flight = 0
        self._closed = False
        self._inner_closed = False
        self._on_end: list[Callable[[], None]] = []

    async def feed(self, pcm: bytes) -> list[AsrUpdate]:
        if self._closed:
            raise AsrError("feed() on a closed ASR stream")
        return await self.guard.call(self, lambda: self.inner.feed(pcm))

    async def flush(self) -> list[AsrUpdate]:
        if self._closed:
            return []
        return await self.guard.call(self, self.inner.flush)

    async def wait_ready(self) -> None:
        await self.inner.wait_ready()

    async def poll(self) -> list[AsrUpdate]:
        if self._closed:
            return []
        return await self.guard.call(self, self.inner.poll)

    def tune(self, tuning: AsrTuning) -> None:
        self.inner.tune(tuning)

    @property
    def audio_seconds(self) -> float:
        return self.inner.audio_seconds

    @property
    def inference_seconds(self) -> float:
        return self.inner.inference_seconds

    async def aclose(self) -> None:
        """Close now, or when the call still running returns."""
        self._closed = True
        if self.in_flight == 0:
            await self._close_inner()

    # ------------------------------------------------------------------ guard side

    def on_call_end(self, callback: Callable[[], None]) -> None:
        self._on_end.append(callback)

    async def call_ended(self) -> None:
        self.in_flight -= 1
        callbacks, self._on_end = self._on_end, []
        for callback in callbacks:
            callback()
        if self._closed and self.in_flight == 0:
            with anyio.CancelScope(shield=True):
                await self._close_inner()

    async def _close_inner(self) -> None:
        if not self._inner_closed:
            self._inner_closed = True
            try:
                await self.inner.aclose()
            except Exception:
                log.exception("closing an ASR stream failed")
