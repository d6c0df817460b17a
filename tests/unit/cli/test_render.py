"""JsonPrinter and LiveView: one JSON line per event; finals scroll, partials and status."""

from __future__ import annotations

import io
import json
from typing import Any

from rich.console import Console

from echopanel.cli.render import JsonPrinter, LiveView, format_summary
from echopanel.client.events import (
    ErrorEvent,
    FinalEvent,
    MetricsEvent,
    PartialEvent,
    StateChanged,
    StatusEvent,
    SummaryEvent,
)
from echopanel.errors import ErrorCode
from echopanel.protocol.messages import (
    AsrFinal,
    AsrPartial,
    FinalSummary,
    MetricsMessage,
    SourceStats,
    StatusMessage,
)


def _state(state: str, previous: str) -> StateChanged:
    return StateChanged(state=state, previous=previous)


def _events() -> list[Any]:
    return [
        _state("starting", "idle"),
        StatusEvent(message=StatusMessage(state="streaming")),
        _state("listening", "starting"),
        PartialEvent(message=AsrPartial(source="system", text="ask not", t0=0.0, t1=0.5)),
        FinalEvent(
            message=AsrFinal(
                source="system",
                text="ask not what",
                t0=1.0,
                t1=2.0,
                confidence=0.9,
                segment_id="a",
            )
        ),
        MetricsEvent(
            message=MetricsMessage(
                source="system",
                backlog_seconds=0.4,
                degrade_level=1,
                realtime_factor=0.2,
                dropped_frames=5,
            )
        ),
        ErrorEvent(code=ErrorCode.SERVER_AT_CAPACITY, message="Server at capacity"),
        SummaryEvent(
            summary=FinalSummary(
                sources={"system": SourceStats(audio_seconds=11.0, frames_dropped=5)}
            )
        ),
    ]


def test_json_printer_one_line_per_event_with_event_field() -> None:
    out = io.StringIO()
    printer = JsonPrinter(out)
    for event in _events():
        printer.handle(event)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "state", "status", "state", "partial", "final", "metrics", "error", "summary",
    ]  # fmt: skip
    assert lines[0]["state"] == "starting" and lines[0]["previous"] == "idle"
    assert lines[1]["state"] == "streaming"
    assert lines[3]["text"] == "ask not" and lines[3]["source"] == "system"
    assert lines[4]["segment_id"] == "a" and lines[4]["confidence"] == 0.9
    assert lines[5]["backlog_seconds"] == 0.4 and lines[5]["degrade_level"] == 1
    assert lines[6] == {
        "event": "error",
        "code": "server_at_capacity",
        "message": "Server at capacity",
    }
    assert lines[7]["sources"] == {"system": {"audio_seconds": 11.0, "frames_dropped": 5}}
    assert printer.count == 8


def test_live_view_prints_finals_and_keeps_status_when_not_a_terminal() -> None:
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=False, width=100))
    with view:
        for event in _events():
            view.handle(event)
    text = out.getvalue()
    assert "ask not what" in text and "[00:01]" in text
    assert "ask not\n" not in text  # partials are not printed when there is no live region
    assert view.state == "listening"
    assert view.backlog == 0.4 and view.degrade == 1 and view.dropped == {"system": 5}
    status = view.status_line().plain
    assert "listening" in status and "backlog 0.4s" in status and "degrade 1" in status
    assert "dropped 5" in status
    assert view.errors == ["Server at capacity (server_at_capacity)"]
    assert view.summary is not None and view.summary["event"] == "summary"


def test_live_view_on_a_terminal_renders_partials_in_place() -> None:
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=True, width=100))
    with view:
        for event in _events()[:4]:
            view.handle(event)
        rendered = Console(file=io.StringIO(), width=100)
        with rendered.capture() as capture:
            rendered.print(view._render())
        assert "ask not" in capture.get()
    assert "listening" in out.getvalue()


def test_summary_text() -> None:
    record = {
        "event": "summary",
        "transcript": [{"text": "a"}, {"text": "b"}],
        "sources": {"system": {"audio_seconds": 11.0, "frames_dropped": 2}},
        "session_id": "s1",
    }
    plain = format_summary(record).plain
    assert "2 segment(s)" in plain and "system 11.0s audio" in plain and "2 frames dropped" in plain
    assert format_summary(None).plain == "no summary received"
