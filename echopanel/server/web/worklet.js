// AudioWorkletProcessor "echopanel-capture": one per source. Runs on the audio rendering
// thread: downmixes to mono, resamples from the context's rate (`sampleRate`, whatever the
// device gives) to 16 kHz, converts to s16le and posts binary EP frames to the page, which
// only forwards them to the WebSocket. Until the page says "send" (the server's `streaming`
// acknowledgment) frames wait here, at most `bufferSeconds` of them (the oldest are dropped
// and counted), as the Python client buffers audio captured before the acknowledgment.

import { Framer, Resampler, downmix } from "./dsp.js";
import { SAMPLE_RATE } from "./wire.js";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { sourceByte, frameMs = 40, bufferSeconds = 5 } = options.processorOptions;
    this.resampler = new Resampler(sampleRate, SAMPLE_RATE);
    this.framer = new Framer(sourceByte, Math.round((SAMPLE_RATE * frameMs) / 1000), (frame) =>
      this.emit(frame),
    );
    this.mono = null;
    this.sending = false;
    this.alive = true;
    this.waiting = []; // frames captured before the acknowledgment
    this.maxWaiting = Math.max(1, Math.ceil((bufferSeconds * 1000) / frameMs));
    this.discarded = 0;
    this.peak = 0;
    this.port.onmessage = (event) => this.command(event.data);
  }

  command(message) {
    if (message === "send") {
      this.sending = true;
      for (const frame of this.waiting) this.port.postMessage({ type: "frame", frame, peak: 0 }, [frame]);
      this.waiting = [];
    }
    else if (message === "flush") {
      this.framer.flush();
      this.port.postMessage({ type: "flushed", discarded: this.discarded });
    } else if (message === "close") this.alive = false;
  }

  emit(frame) {
    const peak = this.peak;
    this.peak = 0;
    if (!this.sending) {
      this.waiting.push(frame);
      if (this.waiting.length > this.maxWaiting) {
        this.waiting.shift();
        this.discarded += 1;
      }
      this.port.postMessage({ type: "level", peak });
      return;
    }
    this.port.postMessage({ type: "frame", frame, peak }, [frame]);
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0 && input[0].length > 0) {
      this.mono = downmix(input, this.mono);
      const mono = this.mono.subarray(0, input[0].length);
      for (let i = 0; i < mono.length; i++) {
        const a = Math.abs(mono[i]);
        if (a > this.peak) this.peak = a;
      }
      this.framer.push(this.resampler.process(mono));
    }
    return this.alive;
  }
}

registerProcessor("echopanel-capture", CaptureProcessor);
