// The page: wires the form, the status line and the transcript to a LiveSession.

import { listMicrophones } from "./capture.js";
import { LiveSession, SessionFailure } from "./session.js";
import { DEFAULT_LABELS, Transcript, formatTime } from "./transcript.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  state: $("status-state"),
  elapsed: $("status-elapsed"),
  backlog: $("status-backlog"),
  level: $("status-level"),
  sources: document.querySelectorAll('input[name="source"]'),
  micField: $("mic-field"),
  micDevice: $("mic-device"),
  labelMic: $("label-mic"),
  labelSystem: $("label-system"),
  tokenField: $("token-field"),
  token: $("token"),
  start: $("start"),
  stop: $("stop"),
  meters: $("meters"),
  error: $("error"),
  errorHeadline: $("error-headline"),
  errorCode: $("error-code"),
  errorDetail: $("error-detail"),
  errorHint: $("error-hint"),
  notice: $("notice"),
  empty: $("empty"),
  finals: $("finals"),
  partials: $("partials"),
  summary: $("summary"),
  summaryText: $("summary-text"),
  downloadMd: $("download-md"),
  downloadJson: $("download-json"),
};

const STATE_TEXT = {
  idle: "Ready",
  starting: "Starting",
  listening: "Listening",
  reconnecting: "Reconnecting",
  finalizing: "Finishing",
  error: "Error",
};
const STEP_TEXT = {
  permissions: "asking for audio access",
  capture: "starting audio",
  connect: "connecting",
  start_sent: "starting the session",
  awaiting_ack: "waiting for the server",
};
const HINTS = {
  unauthorized: "Check the server token and press Start again.",
  server_at_capacity: "Every session slot is busy: try again in a moment.",
  connection_failed: "Check that echopanel serve is running, then press Start again.",
  connection_lost: "The server went away or the network dropped; the transcript so far can still be downloaded.",
  summary_missing: "The transcript so far can still be downloaded.",
  idle_timeout: "No audio reached the server for too long: check the microphone or the shared tab.",
  internal_error: "Check the server log, then press Start again.",
  backend_start_timeout: "The server is busy or stuck; try again, or check its log.",
  asr_unavailable: "Check the server log (the speech model could not run).",
  microphone_permission_required: "Allow the microphone for this site (the icon in the address bar), then press Start.",
  screen_recording_permission_required: "Choose a tab or screen to share, with its audio, then press Start.",
  system_capture_failed: "Share a tab (Chromium-based browsers share tab audio best) with “Share tab audio” ticked.",
};

const transcript = new Transcript();
const state = {
  session: null,
  tokenRequired: false,
  listeningSince: null,
  clock: null,
  metrics: new Map(), // source -> latest metrics
  partialRows: new Map(), // source -> <p>
  levels: new Map(), // source -> loudest peak since the meters were last drawn
  meterTimer: null,
};

function labels() {
  return {
    mic: ui.labelMic.value.trim() || DEFAULT_LABELS.mic,
    system: ui.labelSystem.value.trim() || DEFAULT_LABELS.system,
  };
}

function chosenSources() {
  const value = [...ui.sources].find((r) => r.checked).value;
  return value === "both" ? ["system", "mic"] : [value];
}

// ------------------------------------------------------------------ token and tickets

async function probeToken() {
  try {
    const response = await fetch("/session-ticket", { cache: "no-store" });
    state.tokenRequired = response.ok && (await response.json()).token_required === true;
  } catch {
    state.tokenRequired = false; // the start will report the connection failure
  }
  ui.tokenField.hidden = !state.tokenRequired;
}

/** A single-use ticket for the WebSocket, or null when the server needs none. */
async function getTicket() {
  const headers = {};
  if (state.tokenRequired) {
    const token = ui.token.value.trim();
    if (!token) throw new SessionFailure("unauthorized", "enter the server token first");
    headers.Authorization = `Bearer ${token}`;
  }
  let response;
  try {
    response = await fetch("/session-ticket", { method: "POST", headers, cache: "no-store" });
  } catch (error) {
    throw new SessionFailure("connection_failed", "the server does not answer");
  }
  if (response.status === 401) {
    state.tokenRequired = true;
    ui.tokenField.hidden = false;
    throw new SessionFailure("unauthorized", ui.token.value ? "" : "enter the server token first");
  }
  if (!response.ok) throw new SessionFailure("connection_failed", `session ticket: HTTP ${response.status}`);
  const body = await response.json();
  return body.ticket || null;
}

// ------------------------------------------------------------------ rendering

function renderState(s, step) {
  ui.status.dataset.state = s;
  ui.state.textContent = s === "starting" && step ? `Starting: ${STEP_TEXT[step] || step}` : STATE_TEXT[s] || s;
  const busy = s === "starting" || s === "listening" || s === "reconnecting" || s === "finalizing";
  ui.start.disabled = busy;
  ui.stop.disabled = !(s === "starting" || s === "listening" || s === "reconnecting");
  for (const input of document.querySelectorAll(".controls input, .controls select")) input.disabled = busy;
  updateSourceFields();
  if (busy && document.activeElement === ui.start) ui.stop.focus();
  if (!busy && document.activeElement === ui.stop) ui.start.focus();
  const downloadable = !transcript.isEmpty && s !== "starting";
  ui.downloadMd.disabled = !downloadable;
  ui.downloadJson.disabled = !downloadable;
}

function renderClock() {
  const since = state.listeningSince;
  ui.elapsed.textContent = formatTime(since ? (performance.now() - since) / 1000 : 0);
}

function renderMetrics() {
  if (state.metrics.size === 0) {
    ui.backlog.textContent = "backlog –";
    ui.level.textContent = "level –";
    return;
  }
  const all = [...state.metrics.values()];
  const backlog = Math.max(...all.map((m) => Number(m.backlog_seconds) || 0));
  const level = Math.max(...all.map((m) => Number(m.degrade_level) || 0));
  ui.backlog.textContent = `backlog ${backlog.toFixed(1)} s`;
  ui.level.textContent = `level ${level}`;
}

function showError(detail) {
  ui.error.hidden = false;
  ui.errorHeadline.textContent = detail.headline;
  ui.errorCode.textContent = detail.code;
  ui.errorDetail.textContent = detail.detail && detail.detail !== detail.headline ? detail.detail : "";
  ui.errorDetail.hidden = !ui.errorDetail.textContent;
  ui.errorHint.textContent = HINTS[detail.code] || "";
}

function clearError() {
  ui.error.hidden = true;
  ui.notice.hidden = true;
}

function showNotice(text) {
  ui.notice.hidden = false;
  ui.notice.textContent = text;
}

function row(tag, source, t0, text) {
  const el = document.createElement(tag);
  el.dataset.source = source;
  const time = document.createElement("time");
  time.textContent = `[${formatTime(t0)}]`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = labels()[source] || source;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  el.append(time, who, body);
  return el;
}

function setPartial(message) {
  let el = state.partialRows.get(message.source);
  if (!message.text) {
    if (el) el.remove();
    state.partialRows.delete(message.source);
    return;
  }
  if (!el) {
    el = row("p", message.source, message.t0, "");
    el.className = "partial";
    state.partialRows.set(message.source, el);
    ui.partials.append(el);
  }
  el.querySelector("time").textContent = `[${formatTime(message.t0)}]`;
  el.querySelector(".text").textContent = message.text;
  ui.empty.hidden = true;
}

function addFinal(message) {
  if (!transcript.add(message)) return;
  const partial = state.partialRows.get(message.source);
  if (partial) {
    partial.remove();
    state.partialRows.delete(message.source);
  }
  const nearBottom = ui.finals.scrollHeight - ui.finals.scrollTop - ui.finals.clientHeight < 40;
  ui.finals.append(row("li", message.source, message.t0, message.text));
  if (nearBottom) ui.finals.scrollTop = ui.finals.scrollHeight;
  ui.empty.hidden = true;
  ui.downloadMd.disabled = false;
  ui.downloadJson.disabled = false;
}

function showSummary(summary) {
  transcript.setSummary(summary);
  for (const el of state.partialRows.values()) el.remove();
  state.partialRows.clear();
  const counts = summary.counts || {};
  const names = labels();
  const audio = Object.entries(summary.sources || {})
    .map(([source, s]) => `${names[source] || source} ${Number(s.audio_seconds || 0).toFixed(1)} s`)
    .join(", ");
  const finals = transcript.entries.length;
  const parts = [`${finals} final${finals === 1 ? "" : "s"}`];
  if (audio) parts.push(`audio: ${audio}`);
  if (counts.frames_dropped) parts.push(`${counts.frames_dropped} frames dropped`);
  ui.summaryText.textContent = `Session finished: ${parts.join(" · ")}.`;
  ui.summary.hidden = false;
}

// Levels arrive with every frame (25 per second per source); the bars are redrawn at most
// 8 times a second, and only when a value changed: a meter must not cost the CPU that
// recognition needs when browser and server share a machine.
const METER_INTERVAL_MS = 125;

function noteLevel(source, peak) {
  const previous = state.levels.get(source) || 0;
  state.levels.set(source, Math.max(previous, peak)); // the loudest since the last redraw
  if (!state.meterTimer) state.meterTimer = setTimeout(drawLevels, METER_INTERVAL_MS);
}

function drawLevels() {
  state.meterTimer = null;
  for (const [source, peak] of state.levels) {
    renderLevel(source, peak);
    state.levels.set(source, 0);
  }
}

function renderLevel(source, peak) {
  const bar = ui.meters.querySelector(`[data-source="${source}"] .bar > span`);
  const scale = (Math.min(20, Math.round(Math.sqrt(peak) * 20)) / 20).toFixed(2);
  if (bar && bar.dataset.scale !== scale) {
    bar.dataset.scale = scale;
    bar.style.transform = `scaleX(${scale})`;
  }
}

function updateSourceFields() {
  const sources = chosenSources();
  ui.micField.hidden = !sources.includes("mic");
  for (const meter of ui.meters.querySelectorAll(".meter")) {
    meter.hidden = !sources.includes(meter.dataset.source);
  }
}

async function refreshDevices() {
  const devices = await listMicrophones();
  const current = ui.micDevice.value;
  ui.micDevice.replaceChildren(new Option("Default microphone", ""));
  devices
    .filter((d) => d.deviceId !== "default")
    .forEach((d, i) => ui.micDevice.append(new Option(d.label || `Microphone ${i + 1}`, d.deviceId)));
  ui.micDevice.value = [...ui.micDevice.options].some((o) => o.value === current) ? current : "";
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function fileStem() {
  const when = (transcript.startedAt || new Date()).toISOString().slice(0, 19).replace(/[:T]/g, "-");
  return `transcript-${when}`;
}

// ------------------------------------------------------------------ session

function start() {
  if (state.session && state.session.active) return;
  clearError();
  ui.summary.hidden = true;
  ui.finals.replaceChildren();
  ui.partials.replaceChildren();
  state.partialRows.clear();
  state.metrics.clear();
  state.listeningSince = null;
  renderMetrics();
  renderClock();
  const session = new LiveSession({
    sources: chosenSources(),
    micDeviceId: ui.micDevice.value,
    getTicket,
  });
  state.session = session;
  let previous = null;
  session.addEventListener("state", ({ detail }) => {
    renderState(detail.state, detail.step);
    const resumed = previous === "reconnecting";
    previous = detail.state;
    if (detail.state === "listening" && resumed) {
      // the same session goes on: the transcript and the clock continue
    } else if (detail.state === "listening") {
      transcript.begin(session.sessionId);
      state.listeningSince = performance.now();
      state.clock = setInterval(renderClock, 500);
      refreshDevices();
    } else if (detail.state !== "finalizing" && detail.state !== "reconnecting") {
      clearInterval(state.clock);
      state.clock = null;
    }
    if (detail.state === "idle" || detail.state === "error") {
      clearTimeout(state.meterTimer);
      state.meterTimer = null;
      state.levels.clear();
      for (const source of ["mic", "system"]) renderLevel(source, 0);
    }
  });
  session.addEventListener("partial", ({ detail }) => setPartial(detail));
  session.addEventListener("final", ({ detail }) => addFinal(detail));
  session.addEventListener("metrics", ({ detail }) => {
    state.metrics.set(detail.source, detail);
    renderMetrics();
  });
  session.addEventListener("status", ({ detail }) => {
    if (["buffering", "overloaded", "backpressure", "warning"].includes(detail.state) && detail.message) {
      showNotice(detail.message);
    }
  });
  session.addEventListener("warning", ({ detail }) => showNotice(detail.message));
  session.addEventListener("gap", ({ detail }) => {
    // the server lost the session during an outage: a new one continues it; mark the gap
    showNotice(detail.message);
    const gap = document.createElement("li");
    gap.className = "gap";
    gap.textContent = "… (connection lost: part of the audio may be missing) …";
    ui.finals.append(gap);
  });
  session.addEventListener("summary", ({ detail }) => showSummary(detail));
  session.addEventListener("error", ({ detail }) => {
    showError(detail);
    if (detail.code === "unauthorized" && state.tokenRequired) ui.token.focus();
  });
  session.addEventListener("level", ({ detail }) => noteLevel(detail.source, detail.peak));
  session.start();
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => state.session && state.session.stop());
ui.token.addEventListener("keydown", (event) => {
  if (event.key === "Enter") start();
});
for (const radio of ui.sources) radio.addEventListener("change", updateSourceFields);
ui.downloadMd.addEventListener("click", () =>
  download(`${fileStem()}.md`, "text/markdown;charset=utf-8", transcript.toMarkdown(labels())),
);
ui.downloadJson.addEventListener("click", () =>
  download(`${fileStem()}.json`, "application/json", JSON.stringify(transcript.toJSON(labels()), null, 2) + "\n"),
);
window.addEventListener("beforeunload", (event) => {
  if (state.session && state.session.active) event.preventDefault();
});
if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
  navigator.mediaDevices.addEventListener("devicechange", refreshDevices);
}

updateSourceFields();
renderState("idle");
refreshDevices();
probeToken();
