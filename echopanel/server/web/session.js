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
  SAMPLE_RATE,
  TICKET_PARAM,
} from "./wire.js";

const MAX_BUFFERED_BYTES = 1 << 20; // ~30 s of audio waiting in the socket: drop, count
const NORMAL_CLOSES = new Set([1000, 1001]);

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
  constructor({ sources, micDeviceId = "", getTicket, base = location.href, startTimeout = DEFAULT_START_TIMEOUT, stopTimeout = DEFAULT_STOP_TIMEOUT, frameMs = 40 }) {
    super();
    this.sources = sources;
    this.micDeviceId = micDeviceId;
    this.getTicket = getTicket;
    this.base = base;
    this.startTimeout = startTimeout;
    this.stopTimeout = stopTimeout;
    this.frameMs = frameMs;
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
    return this.state === "starting" || this.state === "listening" || this.state === "finalizing";
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
    const check = () => {
      if (this.attemptId !== attempt || this.state !== "starting") throw new Stale();
    };
    this.capture = new Capture({
      sources: this.sources,
      micDeviceId: this.micDeviceId,
      frameMs: this.frameMs,
      bufferSeconds: this.startTimeout, // as the Python client: the start timeout's worth
      onFrame: (source, frame) => this.sendFrame(frame),
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
      const socket = await this.open(attempt, endpointUrl(this.base, ticket));
      check();
      this.setState("starting", "start_sent");
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
        if (message.state === "streaming" && this.state === "starting" && this.ack) {
          this.ack.resolve();
          this.ack = null;
        }
        this.emit("status", message);
        break;
      case "asr_partial":
        this.emit("partial", message);
        break;
      case "asr_final":
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

  sendFrame(frame) {
    const socket = this.socket;
    if (this.state !== "listening" && this.state !== "finalizing") return;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    if (socket.bufferedAmount > MAX_BUFFERED_BYTES) {
      this.droppedFrames += 1; // the network is behind: drop the newest, count it
      return;
    }
    socket.send(frame);
    this.sentFrames += 1;
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
