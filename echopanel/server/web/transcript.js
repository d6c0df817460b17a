// The page's transcript: finals as they arrive (replaced by the summary's transcript once it
// comes), rendered as Markdown and JSON for download. Pure: no DOM.

export const DEFAULT_LABELS = Object.freeze({ mic: "You", system: "Them" });

/** 75.4 -> "01:15"; past an hour "1:02:03". */
export function formatTime(seconds) {
  const total = Math.max(0, Math.floor(Number(seconds) || 0));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h > 0 ? `${h}:${two(m)}:${two(s)}` : `${two(m)}:${two(s)}`;
}

export class Transcript {
  constructor() {
    this.clear();
  }

  clear() {
    this.entries = [];
    this.ids = new Set();
    this.summary = null;
    this.sessionId = null;
    this.startedAt = null;
  }

  begin(sessionId, startedAt = new Date()) {
    this.clear();
    this.sessionId = sessionId;
    this.startedAt = startedAt;
  }

  /** Add an `asr_final`; finals are immutable and never re-sent, duplicates are skipped. */
  add(final) {
    if (final.segment_id && this.ids.has(final.segment_id)) return false;
    if (final.segment_id) this.ids.add(final.segment_id);
    this.entries.push({
      source: final.source,
      t0: final.t0,
      t1: final.t1,
      text: final.text,
      confidence: final.confidence ?? null,
      segment_id: final.segment_id ?? null,
    });
    return true;
  }

  /** The `final_summary`: its transcript (sorted by t0) is the one downloaded from now on. */
  setSummary(summary) {
    this.summary = summary;
    if (Array.isArray(summary.transcript)) {
      this.entries = summary.transcript.map((e) => ({ ...e }));
      this.ids = new Set(this.entries.map((e) => e.segment_id));
    }
  }

  get isEmpty() {
    return this.entries.length === 0;
  }

  toMarkdown(labels = DEFAULT_LABELS) {
    const lines = ["# Transcript", ""];
    if (this.startedAt) lines.push(`Recorded ${this.startedAt.toISOString()}${this.sessionId ? ` · session ${this.sessionId}` : ""}`, "");
    for (const e of this.entries) {
      lines.push(`- **[${formatTime(e.t0)}] ${labels[e.source] || e.source}:** ${e.text}`);
    }
    return lines.join("\n") + "\n";
  }

  toJSON(labels = DEFAULT_LABELS) {
    const summary = this.summary || {};
    return {
      session_id: this.sessionId,
      started_at: this.startedAt ? this.startedAt.toISOString() : null,
      labels: { ...labels },
      complete: Boolean(this.summary),
      transcript: this.entries.map((e) => ({ ...e, label: labels[e.source] || e.source })),
      sources: summary.sources || null,
      counts: summary.counts || null,
    };
  }
}
