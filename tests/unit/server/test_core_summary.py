"""``build_summary``: sorted, readable, and never above its byte bound (property test)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from echopanel.protocol import SourceStats, TranscriptEntry, decode_server, encode
from echopanel.server.core import build_summary, render_markdown

ENTRY = st.builds(
    TranscriptEntry,
    source=st.sampled_from(["system", "mic"]),
    t0=st.floats(0, 7200, allow_nan=False).map(lambda x: round(x, 3)),
    t1=st.just(7201.0),
    text=st.text(max_size=300),
    confidence=st.floats(0, 1),
    segment_id=st.uuids().map(str),
)


@settings(max_examples=150, deadline=None)
@given(
    finals=st.lists(ENTRY, max_size=120),
    max_bytes=st.integers(4096, 40_000),
    extra_sent=st.integers(0, 5),
)
def test_summary_never_exceeds_the_bound_and_counts_what_it_omits(finals, max_bytes, extra_sent):
    counts = {"finals": len(finals) + extra_sent, "frames": 3}
    summary = build_summary(
        finals,
        sources={"system": SourceStats(audio_seconds=1.0)},
        counts=counts,
        ids={"session_id": "s", "attempt_id": "a", "connection_id": "c"},
        max_bytes=max_bytes,
    )
    wire = encode(summary)
    assert len(wire.encode()) <= max_bytes
    kept = list(summary.transcript)
    assert kept == sorted(kept, key=lambda e: (e.t0, e.t1, e.source))
    ordered = sorted(finals, key=lambda e: (e.t0, e.t1, e.source))
    assert kept == ordered[len(ordered) - len(kept) :]  # the newest are kept
    omitted = counts["finals"] - len(kept)
    assert summary.omitted_finals == (omitted or None)
    assert summary.truncated == (True if omitted else None)
    assert summary.markdown == render_markdown(kept)
    assert decode_server(wire) == summary
