"""The ``final_summary`` and its readable transcript, built from the finals kept.

The summary is bounded in size (``max_bytes`` of encoded JSON, 2 MiB by default; the client
refuses messages over 4 MiB): when every final does not fit, the oldest are left out, and
``truncated`` / ``omitted_finals`` say so. The finals themselves were all sent live.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from echopanel.protocol.messages import FinalSummary, SourceStats, TranscriptEntry, encode

__all__ = ["build_summary", "render_markdown"]


def _line(entry: TranscriptEntry) -> str:
    minutes, seconds = divmod(int(entry.t0), 60)
    return f"- **[{minutes:02d}:{seconds:02d}] {entry.source}:** {entry.text}"


def render_markdown(transcript: Iterable[TranscriptEntry]) -> str:
    """The transcript as readable text: one ``- **[mm:ss] source:** text`` line per final."""
    lines = ["# Transcript", ""]
    lines.extend(_line(entry) for entry in transcript)
    return "\n".join(lines) + "\n"


def _json_bytes(value: str) -> int:
    """Bytes ``value`` takes inside a JSON string (without the quotes)."""
    return len(json.dumps(value, ensure_ascii=False).encode()) - 2


def _entry_bytes(entry: TranscriptEntry) -> int:
    """What one final adds to the encoded summary: its object, a comma, its markdown line."""
    obj = {
        "source": entry.source,
        "t0": entry.t0,
        "t1": entry.t1,
        "text": entry.text,
        "confidence": entry.confidence,
        "segment_id": entry.segment_id,
    }
    encoded = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return len(encoded.encode()) + 1 + _json_bytes(_line(entry) + "\n")


def build_summary(
    finals: Iterable[TranscriptEntry],
    *,
    sources: Mapping[str, SourceStats],
    counts: Mapping[str, int],
    ids: Mapping[str, str | None],
    max_bytes: int | None = None,
) -> FinalSummary:
    """The finals sorted by ``(t0, t1, source)``, their markdown and counters.

    ``counts["finals"]`` is the number of finals sent; when the transcript holds fewer
    (finals not kept, or left out to stay under ``max_bytes``), the summary is marked
    ``truncated`` with the number of ``omitted_finals``.
    """
    transcript = sorted(finals, key=lambda e: (e.t0, e.t1, e.source))
    sent = counts.get("finals", len(transcript))

    def make(kept: list[TranscriptEntry]) -> FinalSummary:
        omitted = max(0, sent - len(kept))
        return FinalSummary(
            transcript=tuple(kept),
            markdown=render_markdown(kept),
            sources=dict(sources),
            counts=dict(counts),
            truncated=True if omitted else None,
            omitted_finals=omitted or None,
            session_id=ids.get("session_id"),
            attempt_id=ids.get("attempt_id"),
            connection_id=ids.get("connection_id"),
        )

    summary = make(transcript)
    if max_bytes is None:
        return summary
    size = len(encode(summary).encode())
    if size <= max_bytes:
        return summary
    # leave out the oldest finals until the estimate fits (with room for the markers) …
    margin = 64
    first = 0
    while first < len(transcript) and size + margin > max_bytes:
        size -= _entry_bytes(transcript[first])
        first += 1
    summary = make(transcript[first:])
    # … and check: drop more if the estimate was short (it is exact for plain text)
    while len(encode(summary).encode()) > max_bytes and first < len(transcript):
        first = min(len(transcript), first + max(1, (len(transcript) - first) // 20))
        summary = make(transcript[first:])
    return summary
