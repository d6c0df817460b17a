// LiveSession: one live transcription session of the page, following the Python client's
// flow (echopanel.session.SessionMachine):
//
//   idle -> starting [permissions -> capture -> connect -> start_sent -> awaiting_ack]
//        -> listening -> finalizing -> idle            and  error (ends that attempt)
//
// The start timeout (5 s by default) runs from the connect step: the browser's permission
// prompts wait for the person. Every failure has one protocol error code and leaves nothing
// running: capture stopped, socket closed, timers cleared. Messages of another attempt are
// ignored. No DOM here: the page listens to events.
//
// Events (CustomEvent, `detail`): state {state, step}, status, partial, final, metrics,
// analysis, summary, error {code, message, detail}, warning {message}, level {source, peak}.

import { Capture, CaptureFailure } from "./capture.js";
import {
  CHANNELS,
  CLIENT_FEATURES,
  CLOSE_DESCRIPTIONS,
  CLOSE_TO_CODE,
  DEFAULT_START_TIMEOUT,
  DEFAULT_STOP_TIMEOUT,
  ENDPOINT_PATH,
  ERROR_MESSAGES,
  FORMAT,
  HEADER_BYTES,
  SAMPLE_RATE,
  TICKET_PARAM,
} from "./wire.js";

const MAX_BUFFERED_BYTES = 1 << 20; // ~30 s of audio waiting in the socket: drop, count
const NORMAL_CLOSES = new Set([1000, 1001]);
// As the Python client (echopanel.session.machine.RECONNECT_CLOSES; 1005: no close code):
// after these closes a listening session with a resume token reconnects.
const RECONNECT_CLOSES = new Set([1005, 1001, 1006, 1011, 1012, 1013, 1014]);
const BYTES_PER_SECOND = SAMPLE_RATE * 2 * CHANNELS;
// The Python client's defaults (echopanel.session.config): the outage window, the backoff
// (first try at once, then 0.5 s doubling up to 8 s, jitter ±50 %) and the audio kept.
export const RECONNECT_WINDOW = 60;
const RECONNECT_BACKOFF = 0.5;
const RECONNECT_BACKOFF_MAX = 8;
const RECONNECT_BUFFER = 30;

export class SessionFailure extends Error {
  /** `message` (optional) is the whole sentence; by default the code's message + detail. */
  constructor(code, detail = "", message = null) {
    super(message || errorMessage(code, detail));
    this.code = code;
    this.detail = detail;
  }
}

class Stale extends Error {} // an attempt that already ended

/** "Backend did not start streaming within 5 seconds", for any number of seconds. */
export function startTimeoutMessage(seconds) {
  const shown = String(Number(seconds));
  return `Backend did not start streaming within ${shown} second${shown === "1" ? "" : "s"}`;
}

/** The message for people of `code` (docs/errors.md), with a detail when there is one. */
export function errorMessage(code, detail = "") {
  const base = ERROR_MESSAGES[code] || code;
  if (!detail || detail === base) return base;
  return detail.startsWith("within ") ? `${base} ${detail}` : `${base}: ${detail}`;
}

function newId() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** ws(s)://<this page's host>/ws/live-listener, with the ticket when there is one. */
export function endpointUrl(base, ticket) {
  const url = new URL(ENDPOINT_PATH, base);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (ticket) url.searchParams.set(TICKET_PARAM, ticket);
  return url.toString();
}

export class LiveSession extends EventTarget {
  /**
   * @param {object} options
   * @param {string[]} options.sources  ["mic"], ["system"] or both
   * @param {string} [options.micDeviceId]
   * @param {() => Promise<string|null>} options.getTicket  resolves to a ticket (or null when
   *   the server needs none); rejects with SessionFailure("unauthorized") on a wrong token
   * @param {string} [options.base]  the server's http(s) URL (default: this page's)
   */
  constructor({ sources, micDeviceId = "", getTicket, base = location.href, startTimeout = DEFAULT_START_TIMEOUT, stopTimeout = DEFAULT_STOP_TIMEOUT, frameMs = 40, reconnectWindow = RECONNECT_WINDOW }) {
    super();
    this.sources = sources;
    this.micDeviceId = micDeviceId;
    this.getTicket = getTicket;
    this.base = base;
    this.startTimeout = startTimeout;
    this.stopTimeout = stopTimeout;
    this.frameMs = frameMs;
    this.reconnectWindow = reconnectWindow;
    this.outageTimer = null;
    this.resetResume();
    this.state = "idle";
    this.step = null;
    this.sessionId = null;
    this.attemptId = null;
    this.connectionId = null;
    this.summary = null;
    this.socket = null;
    this.capture = null;
    this.timer = null;
    this.ack = null;
    this.ended = new Set();
    this.droppedFrames = 0;
    this.sentFrames = 0;
    this.lastServerError = null;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  setState(state, step = null) {
    this.state = state;
    this.step = step;
    this.emit("state", { state, step });
  }

  get active() {
    return ["starting", "listening", "reconnecting", "finalizing"].includes(this.state);
  }

  resetResume() {
    this.resumeToken = null;
    this.lastSegmentId = null;
    this.seenSegments = new Set();
    this.part = 0; // server sessions after the first (resume_unknown): their ids get "~<part>"
    this.sentBytes = {}; // per source: pcm bytes sent to the server session
    this.ring = {}; // per source: [offset, frame] of the newest sent audio (RECONNECT_BUFFER s)
    this.held = {}; // per source: frames captured while reconnecting (RECONNECT_BUFFER s)
    this.tries = 0;
    this.connection = 0;
  }

  /** Run one attempt up to `listening`; resolves either way (failures become `error` events). */
  async start() {
    if (this.active) throw new Error(`a session is already active (state ${this.state})`);
    const attempt = (this.attemptId = newId());
    this.sessionId = newId();
    this.summary = null;
    this.connectionId = null;
    this.lastServerError = null;
    this.ended = new Set();
    this.droppedFrames = 0;
    this.sentFrames = 0;
    this.resetResume();
    const check = () => {
      if (this.attemptId !== attempt || this.state !== "starting") throw new Stale();
    };
    this.capture = new Capture({
      sources: this.sources,
      micDeviceId: this.micDeviceId,
      frameMs: this.frameMs,
      bufferSeconds: this.startTimeout, // as the Python client: the start timeout's worth
      onFrame: (source, frame) => this.sendFrame(source, frame),
      onLevel: (source, peak) => this.emit("level", { source, peak }),
      onEnded: (source) => this.captureEnded(attempt, source),
    });
    this.setState("starting", "permissions");
    try {
      this.capture.begin(); // inside the click's gesture: the audio context may run
      await this.capture.acquire();
      check();
      this.setState("starting", "capture");
      await this.capture.start();
      check();
      this.setState("starting", "connect");
      this.armTimer(this.startTimeout, () =>
        this.fail(attempt, new SessionFailure("backend_start_timeout", "", startTimeoutMessage(this.startTimeout))),
      );
      const ticket = await this.getTicket();
      check();
      const socket = await this.open(attempt, this.url(ticket));
      check();
      this.setState("starting", "start_sent");
      this.sendStart(socket, attempt);
      this.setState("starting", "awaiting_ack");
      await new Promise((resolve, reject) => (this.ack = { resolve, reject }));
      check();
      this.clearTimer();
      this.capture.send();
      this.setState("listening");
    } catch (error) {
      if (!(error instanceof Stale)) this.fail(attempt, error);
    }
  }

  /** The endpoint, with the ticket and the session's routing key (as the Python client). */
  url(ticket) {
    const url = new URL(endpointUrl(this.base, ticket));
    url.searchParams.set("session", this.sessionId);
    return url.toString();
  }

  sendStart(socket, attempt) {
    socket.send(
      JSON.stringify({
        type: "start",
        session_id: this.sessionId,
        attempt_id: attempt,
        sample_rate: SAMPLE_RATE,
        format: FORMAT,
        channels: CHANNELS,
        sources: this.sources,
        client_features: CLIENT_FEATURES,
      }),
    );
  }

  open(attempt, url) {
    return new Promise((resolve, reject) => {
      let socket;
      try {
        socket = new WebSocket(url);
      } catch (error) {
        reject(new SessionFailure("connection_failed", error.message));
        return;
      }
      socket.binaryType = "arraybuffer";
      this.socket = socket;
      let opened = false;
      socket.onopen = () => {
        opened = true;
        resolve(socket);
      };
      socket.onmessage = (event) => this.receive(attempt, event.data);
      socket.onclose = (event) => {
        if (!opened) {
          reject(this.lastServerFailure() || new SessionFailure("connection_failed", `could not open ${new URL(url).origin.replace(/^http/, "ws")}${ENDPOINT_PATH}`));
        } else {
          this.closed(attempt, event);
        }
      };
    });
  }

  lastServerFailure() {
    const e = this.lastServerError;
    return e ? new SessionFailure(e.code, "", e.message || null) : null;
  }

  receive(attempt, data) {
    if (this.attemptId !== attempt || typeof data !== "string") return;
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (!message || typeof message !== "object") return;
    if (message.attempt_id && message.attempt_id !== attempt) return; // an older attempt
    if (message.connection_id) this.connectionId = message.connection_id;
    switch (message.type) {
      case "status":
        if (message.state === "streaming" && message.resume_token) this.resumeToken = message.resume_token;
        if (message.state === "streaming" && this.state === "starting" && this.ack) {
          this.ack.resolve();
          this.ack = null;
        }
        this.emit("status", message);
        if (message.state === "streaming" && this.state === "reconnecting") this.resumed(attempt, message);
        break;
      case "asr_partial":
        this.emit("partial", message);
        break;
      case "asr_final":
        if (message.segment_id) {
          // a later server session numbers its segments afresh: keep ids unique, as Python does
          const id = this.part > 0 ? `${message.segment_id}~${this.part}` : message.segment_id;
          if (this.seenSegments.has(id)) break; // re-sent after a resume
          this.seenSegments.add(id);
          this.lastSegmentId = message.segment_id; // what this server session calls it
          this.emit("final", { ...message, segment_id: id });
          break;
        }
        this.emit("final", message);
        break;
      case "metrics":
        this.emit("metrics", message);
        break;
      case "analysis_update":
        this.emit("analysis", message);
        break;
      case "final_summary":
        this.summary = message;
        this.emit("summary", message);
        if (this.state === "finalizing") this.finish(attempt);
        break;
      case "error":
        if (message.code === "invalid_message") {
          this.emit("warning", { message: errorMessage("invalid_message", message.message) });
        } else if (this.state === "reconnecting" && message.code === "server_at_capacity") {
          this.retry(attempt);
        } else if (this.state === "reconnecting" && message.code === "resume_unknown" && this.resumeToken) {
          this.startFresh(attempt);
        } else {
          this.lastServerError = { code: message.code, message: message.message || "" };
          this.fail(attempt, new SessionFailure(message.code, "", message.message || null));
        }
        break;
      default:
        break; // newer servers may send more: ignored
    }
  }

  /** The socket closed without an `error` message: word it as the Python client does. */
  closed(attempt, event) {
    if (this.attemptId !== attempt || !this.active) return;
    if (this.state === "finalizing" && this.summary) {
      this.finish(attempt);
      return;
    }
    const server = this.lastServerFailure();
    if (server) {
      this.fail(attempt, server);
      return;
    }
    if (this.state === "listening" && this.reconnectWindow > 0 && this.resumeToken && RECONNECT_CLOSES.has(event.code)) {
      this.beginReconnect(attempt);
      return;
    }
    const mapped = NORMAL_CLOSES.has(event.code) ? null : CLOSE_TO_CODE[String(event.code)];
    if (mapped) {
      this.fail(attempt, new SessionFailure(mapped, event.reason || ""));
      return;
    }
    const described = CLOSE_DESCRIPTIONS[String(event.code)] || `close ${event.code}`;
    const why = event.reason ? `: ${event.reason} (${described})` : ` (${described})`;
    let failure;
    if (this.state === "finalizing") {
      failure = new SessionFailure("summary_missing", `the connection closed first${why}`);
    } else if (this.state === "listening") {
      // it was streaming: lost, not "could not connect"
      failure = new SessionFailure("connection_lost", "", `${ERROR_MESSAGES.connection_lost}${why}`);
    } else {
      const closed = `Connection to the backend closed (code ${event.code})`;
      failure = new SessionFailure("connection_failed", "", event.reason ? `${closed}: ${event.reason}` : closed);
    }
    this.fail(attempt, failure);
  }

  sendFrame(source, frame) {
    if (this.state === "reconnecting") {
      this.hold(source, frame);
      return;
    }
    const socket = this.socket;
    if (this.state !== "listening" && this.state !== "finalizing") return;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    if (socket.bufferedAmount > MAX_BUFFERED_BYTES) {
      this.droppedFrames += 1; // the network is behind: drop the newest, count it
      return;
    }
    this.transmit(socket, source, frame);
  }

  /** Send one frame and remember it in the source's ring (for a resume). */
  transmit(socket, source, frame) {
    socket.send(frame);
    this.sentFrames += 1;
    const offset = this.sentBytes[source] || 0;
    const length = frame.byteLength - HEADER_BYTES;
    this.sentBytes[source] = offset + length;
    const ring = (this.ring[source] ||= []);
    ring.push([offset, frame]);
    const limit = RECONNECT_BUFFER * BYTES_PER_SECOND;
    while (ring.length > 1 && offset + length - (ring[0][0] + ring[0][1].byteLength - HEADER_BYTES) >= limit) ring.shift();
  }

  /** While reconnecting: keep the newest RECONNECT_BUFFER seconds per source, oldest dropped. */
  hold(source, frame) {
    const held = (this.held[source] ||= { frames: [], bytes: 0 });
    held.frames.push(frame);
    held.bytes += frame.byteLength - HEADER_BYTES;
    const limit = RECONNECT_BUFFER * BYTES_PER_SECOND;
    while (held.bytes > limit && held.frames.length > 1) {
      held.bytes -= held.frames.shift().byteLength - HEADER_BYTES;
      this.droppedFrames += 1;
    }
  }

  // ------------------------------------------------------------------ reconnecting
  // As echopanel.session.machine: the first try at once, then exponential backoff with
  // jitter; each try bounded by the start timeout; the whole outage by reconnectWindow.

  beginReconnect(attempt) {
    this.dropSocket(1001);
    this.setState("reconnecting");
    this.emit("warning", { message: "Connection lost: reconnecting" });
    this.tries = 0;
    this.outageEnd = performance.now() + this.reconnectWindow * 1000;
    clearTimeout(this.outageTimer);
    this.outageTimer = setTimeout(() => {
      this.outageTimer = null;
      const shown = String(Number(this.reconnectWindow));
      this.fail(
        attempt,
        new SessionFailure("reconnect_failed", "", `${ERROR_MESSAGES.reconnect_failed}: no resume within ${shown} s; the finals received are kept`),
      );
    }, this.reconnectWindow * 1000);
    this.armCapped(0, () => this.reconnectNow(attempt));
  }

  backoff() {
    if (this.tries === 0) return 0;
    const base = Math.min(RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF * 2 ** (this.tries - 1));
    return base * (0.5 + Math.random());
  }

  armCapped(seconds, onExpiry) {
    const left = Math.max(0, (this.outageEnd - performance.now()) / 1000);
    this.armTimer(Math.min(seconds, left), onExpiry);
  }

  async reconnectNow(attempt) {
    if (this.attemptId !== attempt || this.state !== "reconnecting") return;
    this.tries += 1;
    const connection = (this.connection += 1);
    this.armCapped(this.startTimeout, () => this.retry(attempt)); // connect + acknowledgment
    const current = () => this.attemptId === attempt && this.state === "reconnecting" && this.connection === connection;
    let socket;
    try {
      const ticket = await this.getTicket();
      if (!current()) return;
      socket = await this.open(attempt, this.url(ticket));
    } catch (error) {
      if (current()) this.retry(attempt);
      return;
    }
    if (!current()) return;
    socket.onclose = (event) => {
      if (!current()) return;
      const unknown = event.code === 4404 || (this.lastServerError && this.lastServerError.code === "resume_unknown");
      if (unknown && this.resumeToken) this.startFresh(attempt);
      else this.retry(attempt);
    };
    this.lastServerError = null;
    if (this.resumeToken) {
      const audioSeconds = {};
      for (const source of this.sources) audioSeconds[source] = (this.sentBytes[source] || 0) / BYTES_PER_SECOND;
      socket.send(
        JSON.stringify({
          type: "resume",
          session_id: this.sessionId,
          resume_token: this.resumeToken,
          last_segment_id: this.lastSegmentId,
          audio_seconds: audioSeconds,
        }),
      );
    } else {
      this.sendStart(socket, attempt); // a new server session continues this session
    }
  }

  /** This try failed (or took too long): close it, wait the backoff, try again. */
  retry(attempt) {
    if (this.attemptId !== attempt || this.state !== "reconnecting") return;
    this.connection += 1; // the try's late events are ignored
    this.lastServerError = null;
    this.dropSocket(1001);
    this.armCapped(this.backoff(), () => this.reconnectNow(attempt));
  }

  /** The server no longer has the session: a new server session continues it (gap marked). */
  startFresh(attempt) {
    this.resumeToken = null;
    this.part += 1;
    this.sentBytes = {};
    this.ring = {};
    this.lastServerError = null;
    this.emit("gap", {
      message: "the server no longer had the session: a new server session continues it; what was said during the outage may be missing",
    });
    this.connection += 1;
    this.dropSocket(1001);
    this.armCapped(0, () => this.reconnectNow(attempt));
  }

  /** The resumed (or new) acknowledgment: send what the server lacks, the held audio, then live. */
  resumed(attempt, status) {
    this.clearTimer();
    clearTimeout(this.outageTimer);
    this.outageTimer = null;
    this.tries = 0;
    const socket = this.socket;
    const closedHandler = (event) => this.closed(attempt, event);
    if (socket) socket.onclose = closedHandler;
    this.setState("listening");
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const have = (status && status.audio_seconds) || {};
    const rings = this.ring;
    this.ring = {};
    for (const source of this.sources) {
      const position = Math.round(Number(have[source] || 0) * SAMPLE_RATE) * 2 * CHANNELS;
      this.sentBytes[source] = position;
      for (const [offset, frame] of rings[source] || []) {
        const length = frame.byteLength - HEADER_BYTES;
        if (offset + length <= position) continue;
        const skip = Math.max(0, position - offset);
        this.transmit(socket, source, skip ? cutFrame(frame, skip) : frame);
      }
    }
    const held = this.held;
    this.held = {};
    for (const source of this.sources) {
      for (const frame of (held[source] && held[source].frames) || []) this.transmit(socket, source, frame);
    }
  }

  /** Close the current socket without its events reaching the session. */
  dropSocket(code) {
    const socket = this.socket;
    this.socket = null;
    if (!socket) return;
    socket.onclose = null;
    socket.onmessage = null;
    socket.onopen = null;
    if (socket.readyState === WebSocket.OPEN || socket.readyState === WebSocket.CONNECTING) socket.close(code);
  }

  captureEnded(attempt, source) {
    if (this.attemptId !== attempt || !this.active) return;
    this.ended.add(source);
    if (this.sources.every((s) => this.ended.has(s))) {
      this.emit("warning", { message: `${source === "mic" ? "The microphone" : "Sharing"} ended: stopping` });
      if (this.state === "listening") this.stop();
      else this.fail(attempt, new CaptureFailure(source === "mic" ? "microphone_capture_failed" : "system_capture_failed", "the source ended"));
    } else {
      this.emit("warning", { message: `${source === "mic" ? "The microphone" : "Tab/system audio"} ended; the other source goes on` });
    }
  }

  /** Stop: while starting, abandon the attempt; while listening, flush, `stop`, wait for the summary. */
  async stop() {
    const attempt = this.attemptId;
    if (this.state === "starting") {
      this.cleanup();
      this.setState("idle");
      return;
    }
    if (this.state === "reconnecting") {
      this.cleanup(1000); // ends with what was received (as the Python client)
      this.setState("idle");
      return;
    }
    if (this.state !== "listening") return;
    this.setState("finalizing");
    this.armTimer(this.stopTimeout, () =>
      this.fail(attempt, new SessionFailure("summary_missing", `within ${this.stopTimeout} s of the stop`)),
    );
    await this.capture.flush();
    if (this.attemptId !== attempt || this.state !== "finalizing") return;
    this.capture.close();
    const socket = this.socket;
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: "stop", session_id: this.sessionId }));
    }
  }

  finish(attempt) {
    if (this.attemptId !== attempt) return;
    this.cleanup(1000);
    this.setState("idle");
  }

  fail(attempt, error) {
    if (this.attemptId !== attempt || !this.active) return;
    let failure = error;
    if (error instanceof CaptureFailure) failure = new SessionFailure(error.code, error.detail);
    else if (!(error instanceof SessionFailure)) failure = new SessionFailure("connection_failed", String((error && error.message) || error));
    this.cleanup(1000);
    this.setState("error");
    const headline = ERROR_MESSAGES[failure.code] || failure.code;
    const message = failure.message;
    const detail = message.startsWith(headline) ? message.slice(headline.length).replace(/^[:\s]+/, "") : message;
    this.emit("error", { code: failure.code, message, headline, detail });
  }

  cleanup(closeCode = 1000) {
    this.clearTimer();
    clearTimeout(this.outageTimer);
    this.outageTimer = null;
    this.held = {};
    this.ring = {};
    if (this.ack) {
      this.ack.reject(new Stale());
      this.ack = null;
    }
    if (this.capture) this.capture.close();
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onclose = null;
      socket.onmessage = null;
      if (socket.readyState === WebSocket.OPEN || socket.readyState === WebSocket.CONNECTING) {
        socket.close(closeCode);
      }
    }
  }

  armTimer(seconds, onExpiry) {
    this.clearTimer();
    this.timer = setTimeout(() => {
      this.timer = null;
      onExpiry();
    }, seconds * 1000);
  }

  clearTimer() {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** An EP frame without the first `skip` pcm bytes (same header). */
function cutFrame(frame, skip) {
  const bytes = new Uint8Array(frame instanceof ArrayBuffer ? frame : frame.buffer.slice(frame.byteOffset, frame.byteOffset + frame.byteLength));
  const out = new Uint8Array(bytes.length - skip);
  out.set(bytes.subarray(0, HEADER_BYTES), 0);
  out.set(bytes.subarray(HEADER_BYTES + skip), HEADER_BYTES);
  return out.buffer;
}
