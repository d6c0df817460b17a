// Audio arithmetic shared by the AudioWorklet and the tests: mono downmix, anti-aliased
// resampling from the device rate to 16 kHz, float -> s16le, and EP framing.
// Pure module: no DOM, no Web Audio objects, so it runs in a worklet and on a page alike.

import { FRAME_MAGIC, FRAME_VERSION, HEADER_BYTES, SAMPLE_RATE } from "./wire.js";

const TABLE_STEPS = 64; // kernel samples per input sample (linear interpolation between)

/** Average the channels of one render quantum into `out` (grown when needed). */
export function downmix(channels, out) {
  const n = channels[0].length;
  if (!out || out.length < n) out = new Float32Array(n);
  if (channels.length === 1) {
    out.set(channels[0]);
    return out;
  }
  out.fill(0, 0, n);
  const scale = 1 / channels.length;
  for (const channel of channels) {
    for (let i = 0; i < n; i++) out[i] += channel[i] * scale;
  }
  return out;
}

/**
 * Streaming windowed-sinc resampler (Blackman window). Downsampling low-passes just below
 * the output's Nyquist frequency, so 48 kHz or 44.1 kHz speech reaches 16 kHz without
 * aliasing; upsampling (an 8 kHz headset) interpolates band-limited.
 */
export class Resampler {
  constructor(inRate, outRate = SAMPLE_RATE, zeroCrossings = 16) {
    if (!(inRate > 0) || !(outRate > 0)) throw new RangeError("sample rates must be positive");
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate; // input samples per output sample
    this.passthrough = inRate === outRate;
    const scale = Math.min(1, outRate / inRate); // cutoff as a fraction of the input Nyquist
    this.cutoff = 0.94 * scale;
    this.half = Math.ceil(zeroCrossings / scale); // kernel half width, in input samples
    const size = this.half * TABLE_STEPS + 2;
    this.table = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      const d = i / TABLE_STEPS;
      const x = d / this.half;
      const window = x >= 1 ? 0 : 0.42 + 0.5 * Math.cos(Math.PI * x) + 0.08 * Math.cos(2 * Math.PI * x);
      const arg = Math.PI * this.cutoff * d;
      this.table[i] = this.cutoff * (d === 0 ? 1 : Math.sin(arg) / arg) * window;
    }
    this.buffer = new Float32Array(4096);
    this.length = this.half; // `half` zeros of history before the first sample
    this.position = this.half; // where the next output sample sits, in buffer samples
    this.out = new Float32Array(256);
  }

  kernel(distance) {
    const f = Math.abs(distance) * TABLE_STEPS;
    const i = Math.floor(f);
    if (i + 1 >= this.table.length) return 0;
    const frac = f - i;
    return this.table[i] + (this.table[i + 1] - this.table[i]) * frac;
  }

  /** Feed input samples; returns the output samples ready so far (a view, valid until the next call). */
  process(input) {
    if (this.passthrough) return input;
    if (this.length + input.length > this.buffer.length) {
      const grown = new Float32Array(Math.max(this.buffer.length * 2, this.length + input.length));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
    const maxOut = Math.ceil((this.length - this.position) / this.step) + 1;
    if (this.out.length < maxOut) this.out = new Float32Array(maxOut * 2);
    let count = 0;
    const { buffer, half } = this;
    while (this.position + half < this.length) {
      const t = this.position;
      const center = Math.floor(t);
      let sum = 0;
      for (let k = center - half + 1; k <= center + half; k++) {
        sum += buffer[k] * this.kernel(t - k);
      }
      this.out[count++] = sum;
      this.position += this.step;
    }
    // keep `half` samples of history before the next output position
    const drop = Math.max(0, Math.floor(this.position) - half);
    if (drop > 0) {
      buffer.copyWithin(0, drop, this.length);
      this.length -= drop;
      this.position -= drop;
    }
    return this.out.subarray(0, count);
  }
}

/** Float samples in [-1, 1] -> signed 16-bit, clipped. */
export function toInt16(x) {
  const v = x < -1 ? -1 : x > 1 ? 1 : x;
  return Math.round(v < 0 ? v * 0x8000 : v * 0x7fff);
}

/**
 * Collects 16 kHz samples into binary EP frames: `EP`, version, source byte, PCM s16le.
 * `onFrame(arrayBuffer)` gets each full frame (`frameSamples` samples long).
 */
export class Framer {
  constructor(sourceByte, frameSamples, onFrame) {
    this.sourceByte = sourceByte;
    this.frameSamples = frameSamples;
    this.onFrame = onFrame;
    this.fresh();
  }

  fresh() {
    this.frame = new ArrayBuffer(HEADER_BYTES + 2 * this.frameSamples);
    this.view = new DataView(this.frame);
    this.view.setUint8(0, FRAME_MAGIC[0]);
    this.view.setUint8(1, FRAME_MAGIC[1]);
    this.view.setUint8(2, FRAME_VERSION);
    this.view.setUint8(3, this.sourceByte);
    this.filled = 0;
  }

  push(samples) {
    for (let i = 0; i < samples.length; i++) {
      this.view.setInt16(HEADER_BYTES + 2 * this.filled, toInt16(samples[i]), true);
      if (++this.filled === this.frameSamples) {
        const frame = this.frame;
        this.fresh();
        this.onFrame(frame);
      }
    }
  }

  /** Emit the partial frame (if any samples are waiting); used before a stop. */
  flush() {
    if (this.filled === 0) return;
    const frame = this.frame.slice(0, HEADER_BYTES + 2 * this.filled);
    this.fresh();
    this.onFrame(frame);
  }
}
