// Capture: the browser's audio sources, turned into EP frames by the AudioWorklet.
//   mic     navigator.mediaDevices.getUserMedia (device choice by deviceId)
//   system  navigator.mediaDevices.getDisplayMedia with audio: a tab's audio or the
//           screen's / system audio ("Share tab audio" / "Share system audio")
// Failures become CaptureFailure(code, detail) with the protocol's error codes.

import { SOURCE_BYTES } from "./wire.js";

const WORKLET_URL = new URL("./worklet.js", import.meta.url);

export class CaptureFailure extends Error {
  constructor(code, detail) {
    super(detail);
    this.code = code;
    this.detail = detail;
  }
}

const PERMISSION_CODE = {
  system: "screen_recording_permission_required",
  mic: "microphone_permission_required",
};
const FAILURE_CODE = { system: "system_capture_failed", mic: "microphone_capture_failed" };

/** Map a getUserMedia/getDisplayMedia rejection to the protocol's code and a reason. */
export function mediaFailure(source, error) {
  const name = error && error.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    const detail =
      source === "mic"
        ? "the browser or the system refused microphone access (see the address bar's site settings)"
        : "sharing was cancelled or refused";
    return new CaptureFailure(PERMISSION_CODE[source], detail);
  }
  if (source === "mic" && (name === "NotFoundError" || name === "OverconstrainedError")) {
    return new CaptureFailure(PERMISSION_CODE.mic, "no microphone found (or the chosen one is gone)");
  }
  const reason = (error && error.message) || String(error);
  return new CaptureFailure(FAILURE_CODE[source], reason);
}

/**
 * The microphone's constraints. Browsers default to call processing (noise suppression,
 * automatic gain, echo cancellation), which reshapes speech (measured in the browser tests:
 * 12-17 dB of ripple across the speech band); Whisper does better on the plain signal. Echo
 * cancellation stays on when the tab/system audio is captured too, so what the speakers
 * play is not heard (and transcribed) a second time through the microphone.
 */
export function micConstraints(micDeviceId, withSystemAudio) {
  const audio = {
    channelCount: { ideal: 1 },
    echoCancellation: withSystemAudio,
    noiseSuppression: false,
    autoGainControl: false,
  };
  if (micDeviceId) audio.deviceId = { exact: micDeviceId };
  return audio;
}

async function openStream(source, micDeviceId, withSystemAudio) {
  const media = globalThis.navigator && navigator.mediaDevices;
  if (!media || !window.isSecureContext) {
    throw new CaptureFailure(
      PERMISSION_CODE[source],
      "this page is not a secure context: open it as http://localhost:PORT or over HTTPS",
    );
  }
  if (source === "mic") {
    try {
      return await media.getUserMedia({
        audio: micConstraints(micDeviceId, withSystemAudio),
        video: false,
      });
    } catch (error) {
      throw mediaFailure(source, error);
    }
  }
  if (!media.getDisplayMedia) {
    throw new CaptureFailure(FAILURE_CODE.system, "this browser cannot capture tab or system audio");
  }
  let stream;
  try {
    stream = await media.getDisplayMedia({
      video: true, // required by the API; the video track is stopped at once
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      systemAudio: "include",
      selfBrowserSurface: "exclude",
    });
  } catch (error) {
    throw mediaFailure(source, error);
  }
  if (stream.getAudioTracks().length === 0) {
    for (const track of stream.getTracks()) track.stop();
    throw new CaptureFailure(
      FAILURE_CODE.system,
      'the shared tab or screen has no audio: tick "Share tab audio" (or "Share system audio") in the picker',
    );
  }
  for (const track of stream.getVideoTracks()) track.stop();
  return stream;
}

/**
 * The sources of one session attempt. `begin()` must run inside the click handler (it makes
 * the AudioContext while the page has the user's gesture); `acquire()` asks for the
 * permissions (screen first, then microphone, as the Python client does); `start()` builds
 * the audio graph (frames wait in the worklet, up to `bufferSeconds`); `send()` releases
 * them and lets the rest flow after the acknowledgment; `flush()` pushes out
 * the last partial frames; `close()` releases everything and is safe to call twice.
 */
export class Capture {
  constructor({ sources, micDeviceId = "", frameMs = 40, bufferSeconds = 5, onFrame, onLevel, onEnded }) {
    this.bufferSeconds = bufferSeconds;
    this.sources = sources;
    this.micDeviceId = micDeviceId;
    this.frameMs = frameMs;
    this.onFrame = onFrame;
    this.onLevel = onLevel || (() => {});
    this.onEnded = onEnded || (() => {});
    this.streams = new Map();
    this.nodes = new Map();
    this.context = null;
    this.closed = false;
  }

  begin() {
    const Context = globalThis.AudioContext || globalThis.webkitAudioContext;
    if (!Context) throw new CaptureFailure(FAILURE_CODE[this.sources[0]], "this browser has no Web Audio");
    this.context = new Context({ latencyHint: "interactive" });
  }

  async acquire(onStep) {
    for (const source of ["system", "mic"].filter((s) => this.sources.includes(s))) {
      if (onStep) onStep(source);
      const stream = await openStream(source, this.micDeviceId, this.sources.includes("system"));
      if (this.closed) {
        for (const track of stream.getTracks()) track.stop();
        return;
      }
      this.streams.set(source, stream);
      for (const track of stream.getAudioTracks()) {
        track.addEventListener("ended", () => this.onEnded(source));
      }
    }
  }

  get sampleRate() {
    return this.context ? this.context.sampleRate : null;
  }

  async start() {
    const context = this.context;
    if (!context.audioWorklet) {
      throw new CaptureFailure(FAILURE_CODE[this.sources[0]], "this browser has no AudioWorklet");
    }
    try {
      await context.audioWorklet.addModule(WORKLET_URL);
      if (context.state !== "running") await context.resume();
    } catch (error) {
      throw new CaptureFailure(FAILURE_CODE[this.sources[0]], `audio engine: ${error.message || error}`);
    }
    const sink = context.createGain();
    sink.gain.value = 0; // the graph is pulled by the destination; nothing is heard
    sink.connect(context.destination);
    for (const [source, stream] of this.streams) {
      try {
        const input = context.createMediaStreamSource(stream);
        const node = new AudioWorkletNode(context, "echopanel-capture", {
          numberOfInputs: 1,
          numberOfOutputs: 1,
          outputChannelCount: [1],
          processorOptions: {
            sourceByte: SOURCE_BYTES[source],
            frameMs: this.frameMs,
            bufferSeconds: this.bufferSeconds,
          },
        });
        node.port.onmessage = (event) => this.fromWorklet(source, event.data);
        input.connect(node);
        node.connect(sink);
        this.nodes.set(source, { input, node });
      } catch (error) {
        throw new CaptureFailure(FAILURE_CODE[source], error.message || String(error));
      }
    }
  }

  fromWorklet(source, message) {
    if (message.type === "frame") {
      this.onFrame(source, message.frame);
      this.onLevel(source, message.peak);
    } else if (message.type === "level") {
      this.onLevel(source, message.peak);
    } else if (message.type === "flushed") {
      const waiter = this.flushing && this.flushing.get(source);
      if (waiter) waiter();
    }
  }

  send() {
    for (const { node } of this.nodes.values()) node.port.postMessage("send");
  }

  /** Ask every worklet for its last partial frame; resolves when all answered (or after `ms`). */
  async flush(ms = 500) {
    this.flushing = new Map();
    const answers = [...this.nodes.keys()].map(
      (source) => new Promise((resolve) => this.flushing.set(source, resolve)),
    );
    for (const { node } of this.nodes.values()) node.port.postMessage("flush");
    await Promise.race([Promise.all(answers), new Promise((r) => setTimeout(r, ms))]);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    for (const stream of this.streams.values()) {
      for (const track of stream.getTracks()) track.stop();
    }
    for (const { input, node } of this.nodes.values()) {
      node.port.postMessage("close");
      input.disconnect();
      node.disconnect();
    }
    this.nodes.clear();
    this.streams.clear();
    if (this.context && this.context.state !== "closed") this.context.close().catch(() => {});
  }
}

/** Audio inputs for the device picker (labels appear once the microphone was allowed). */
export async function listMicrophones() {
  const media = globalThis.navigator && navigator.mediaDevices;
  if (!media || !media.enumerateDevices) return [];
  try {
    const devices = await media.enumerateDevices();
    return devices.filter((d) => d.kind === "audioinput" && d.deviceId);
  } catch {
    return [];
  }
}
