"""How a session looks in the terminal: a rich live view, or one JSON object per line.

* :class:`LiveView`: finals scroll (printed above the live region, one line each, with the
  source and time), the partial text of each source updates in place below them, and a
  status line shows the session state, an elapsed timer (from ``listening``), the server's
  backlog, degrade level, real-time factor and dropped frames. When stdout is not a
  terminal, only finals, errors and the summary are printed (no redraws).
* :class:`JsonPrinter`: ``--json``; every event as one line with an ``event`` field
  (``state``, ``partial``, ``final``, ``status``, ``metrics``, ``analysis``, ``error``,
  ``summary``) and the wire fields of its message (DESIGN.md, "Protocol details").

Both take events through :meth:`handle` (usable as a ``Session`` ``on_event`` callback).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from echopanel.client.bundle import event_name, event_record

__all__ = ["JsonPrinter", "LiveView", "format_summary", "print_error_line"]

_SOURCE_STYLE = {"system": "cyan", "mic": "magenta"}


def _fmt_clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def print_error_line(message: str, *, stream: TextIO | None = None) -> None:
    """The CLI's one line for an error (never a traceback)."""
    out = stream if stream is not None else sys.stderr
    print(f"echopanel: error: {message}", file=out, flush=True)


class JsonPrinter:
    """Prints each event as one JSON line (flushed) with an ``event`` field."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.count = 0

    def handle(self, event: object) -> None:
        self.emit(event_record(event))

    __call__ = handle

    def emit(self, record: dict[str, Any]) -> None:
        self.stream.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.stream.flush()
        self.count += 1

    def __enter__(self) -> JsonPrinter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.flush()


class LiveView:
    """The live terminal view of one session. Use as a context manager around the session."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        title: str = "echopanel",
        show_partials: bool = True,
    ) -> None:
        self.console = console or Console(highlight=False)
        self.title = title
        self.show_partials = show_partials
        self.state = "idle"
        self.partials: dict[str, str] = {}
        self.finals: list[dict[str, Any]] = []
        self.status = ""
        self.backlog: float | None = None
        self.degrade: int | None = None
        self.rtf: float | None = None
        self.dropped: dict[str, int] = {}
        self.errors: list[str] = []
        self.summary: dict[str, Any] | None = None
        self._listening_since: float | None = None
        self._elapsed_final: float | None = None
        self._live: Live | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self._live = Live(
                get_renderable=self._render,
                console=self.console,
                refresh_per_second=8,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self.console.is_terminal:
            self.console.print(self.status_line())

    # ------------------------------------------------------------------ events

    @property
    def elapsed(self) -> float:
        if self._elapsed_final is not None:
            return self._elapsed_final
        if self._listening_since is None:
            return 0.0
        return time.monotonic() - self._listening_since

    def handle(self, event: object) -> None:
        record = event_record(event)
        kind = event_name(event)
        if kind == "state":
            self._on_state(str(record.get("state")))
        elif kind == "partial":
            self.partials[str(record.get("source"))] = str(record.get("text", ""))
        elif kind == "final":
            self._on_final(record)
        elif kind == "status":
            self.status = str(record.get("state", ""))
            if record.get("message"):
                self.status += f": {record['message']}"
            if record.get("backlog_seconds") is not None:
                self.backlog = float(record["backlog_seconds"])
            if record.get("degrade_level") is not None:
                self.degrade = int(record["degrade_level"])
        elif kind == "metrics":
            self.backlog = float(record.get("backlog_seconds", 0.0))
            self.degrade = int(record.get("degrade_level", 0))
            self.rtf = float(record.get("realtime_factor", 0.0))
            self.dropped[str(record.get("source"))] = int(record.get("dropped_frames", 0))
        elif kind == "error":
            # shown in the status line; the command prints the one error line at the end
            self.errors.append(
                f"{record.get('message') or record.get('code')} ({record.get('code')})"
            )
        elif kind == "summary":
            self.summary = record
        self._refresh()

    __call__ = handle

    def _on_state(self, state: str) -> None:
        previous, self.state = self.state, state
        if state == "listening" and self._listening_since is None:
            self._listening_since = time.monotonic()
        elif previous == "listening" and state != "listening":
            self._elapsed_final = self.elapsed

    def _on_final(self, record: dict[str, Any]) -> None:
        source = str(record.get("source", "system"))
        self.partials.pop(source, None)
        self.finals.append(record)
        text = str(record.get("text", "")).strip()
        if not text:
            return
        line = Text()
        line.append(f"[{_fmt_clock(float(record.get('t0', 0.0)))}] ", style="dim")
        line.append(f"{source:>6} ", style=_SOURCE_STYLE.get(source, "white"))
        line.append(text)
        self.console.print(line)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    # ------------------------------------------------------------------ rendering

    def status_line(self) -> Text:
        line = Text()
        style = {
            "listening": "bold green",
            "error": "bold red",
            "starting": "yellow",
            "reconnecting": "bold yellow",
        }.get(self.state, "bold")
        line.append(f"● {self.state}", style=style)
        line.append(f"  {_fmt_clock(self.elapsed)}")
        if self.backlog is not None:
            line.append(f"  backlog {self.backlog:.1f}s")
        if self.degrade is not None:
            line.append(f"  degrade {self.degrade}", style="yellow" if self.degrade else "")
        if self.rtf is not None:
            line.append(f"  rtf {self.rtf:.2f}")
        dropped = sum(self.dropped.values())
        if dropped:
            line.append(f"  dropped {dropped}", style="yellow")
        if self.status and self.status not in ("streaming", "connected"):
            line.append(f"  [{self.status}]", style="dim")
        if self.errors:
            line.append(f"  {self.errors[-1]}", style="red")
        return line

    def _render(self) -> RenderableType:
        parts: list[RenderableType] = []
        if self.show_partials:
            for source, text in list(self.partials.items()):
                if text.strip():
                    partial = Text()
                    partial.append(f"{source:>14} ", style=_SOURCE_STYLE.get(source, "white"))
                    partial.append(text.strip(), style="italic dim")
                    parts.append(partial)
        parts.append(self.status_line())
        return Group(*parts)


def format_summary(summary: dict[str, Any] | None) -> Text:
    """A short human summary of a ``summary`` event record."""
    text = Text()
    if summary is None:
        text.append("no summary received", style="dim")
        return text
    transcript = summary.get("transcript") or []
    text.append("── summary ", style="bold")
    text.append(f"{len(transcript)} segment(s)")
    sources = summary.get("sources") or {}
    for name, stats in sources.items():
        seconds = float(stats.get("audio_seconds", 0.0))
        dropped = int(stats.get("frames_dropped", 0))
        text.append(f" · {name} {seconds:.1f}s audio")
        if dropped:
            text.append(f", {dropped} frames dropped", style="yellow")
    session_id = summary.get("session_id")
    if session_id:
        text.append(f" · session {session_id}", style="dim")
    return text
