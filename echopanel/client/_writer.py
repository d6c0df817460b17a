"""``BackgroundWriter``: a session bundle's file I/O, off the event loop, in order, bounded.

One worker thread runs the submitted jobs one at a time in submission order (so lines and
frames land in the order they were recorded). The queue between the caller (the event loop)
and the worker is bounded, and a submit never blocks the caller:

* *droppable* jobs (audio frames of ``keep_audio``) are refused once the queue is half full,
  keeping the other half for event lines;
* other jobs (event lines) are refused only when the queue is full — the disk has stalled
  behind thousands of jobs. The bundle keeps its finals in memory as well, so a refused event
  line never costs ``transcript.json`` a final;
* every refusal is counted (:attr:`dropped`) and the bundle's receipt reports it.

``call`` runs a job after everything submitted before it and waits for it (bounded) — the
bundle's close and flush use it, from a thread of their own.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Final

__all__ = ["QUEUE_LIMIT", "BackgroundWriter"]

logger = logging.getLogger("echopanel.bundle")

#: jobs waiting at most (event lines and audio frames: a few MB in all)
QUEUE_LIMIT: Final = 4096
#: an idle worker thread ends after this many seconds (a new job starts another)
_IDLE_SECONDS: Final = 5.0

Job = Callable[[], object]


class BackgroundWriter:
    """A worker thread running file jobs in order behind a bounded queue (module docstring)."""

    def __init__(self, name: str = "echopanel bundle writer", *, limit: int = QUEUE_LIMIT):
        self.name = name
        self.limit = limit
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=limit)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: refused jobs by kind ("audio", "events")
        self.dropped: dict[str, int] = {}
        #: jobs that raised (logged)
        self.failures = 0

    def _ensure_thread(self) -> None:
        """Called *after* each put: a worker that decided to end has seen an empty queue
        under the lock, so the job just queued is never stranded."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            try:
                job()
            except Exception:
                self.failures += 1
                logger.exception("bundle write failed")
            finally:
                self._queue.task_done()

    def submit(self, job: Job, *, kind: str, droppable: bool = False) -> bool:
        """Queue ``job`` without ever blocking; ``False`` (counted) if refused."""
        if droppable and self._queue.qsize() >= self.limit // 2:
            self._refuse(kind)
            return False
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._refuse(kind)
            return False
        self._ensure_thread()
        return True

    def _refuse(self, kind: str) -> None:
        count = self.dropped.get(kind, 0) + 1
        self.dropped[kind] = count
        if count == 1:
            logger.warning("bundle writer behind: dropping %s writes (counted)", kind)

    def call(self, job: Callable[[], Any], *, timeout: float) -> Any:
        """Run ``job`` on the worker after every job submitted before it; its result.

        Blocks the calling thread (never call it on the event loop) up to ``timeout``
        seconds; raises ``TimeoutError`` past it (the job still runs later, in order)."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = job()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        self._queue.put(run, timeout=timeout)  # a full queue: wait for room (bounded)
        self._ensure_thread()
        if not done.wait(timeout):
            raise TimeoutError(f"{self.name}: a bundle write took more than {timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box.get("result")
