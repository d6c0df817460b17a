"""The ``final_summary`` and its readable transcript, built from the finals kept."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from echopanel.protocol.messages import FinalSummary, SourceStats, TranscriptEntry

__all__ = ["build_summary", "render_markdown"]


def render_markdown(transcript: Iterable[TranscriptEntry]) -> str:
    """The transcript as readable text: one ``- **[mm:ss] source:** text`` line per final."""
    lines = ["# Transcript", ""]
    for entry in transcript:
        minutes, seconds = divmod(int(entry.t0), 60)
        lines.append(f"- **[{minutes:02d}:{seconds:02d}] {entry.source}:** {entry.text}")
    return "\n".join(lines) + "\n"


def build_summary(
    finals: Iterable[TranscriptEntry],
    *,
    sources: Mapping[str, SourceStats],
    counts: Mapping[str, int],
    ids: Mapping[str, str | None],
) -> FinalSummary:
    """Every final kept, sorted by ``(t0, t1, source)``, with its markdown and counters."""
    transcript = tuple(sorted(finals, key=lambda e: (e.t0, e.t1, e.source)))
    return FinalSummary(
        transcript=transcript,
        markdown=render_markdown(transcript),
        sources=dict(sources),
        counts=dict(counts),
        session_id=ids.get("session_id"),
        attempt_id=ids.get("attempt_id"),
        connection_id=ids.get("connection_id"),
    )
