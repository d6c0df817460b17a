"""Micro-benchmark of the decode engine: what batching saves per decode.

For each batch size B, B threads submit a decode of the same kind at once (jfk.flac cut to
``--seconds``, word timestamps, the server's options) and the engine runs them as one round;
compared with the same decodes run one by one through ``WhisperModel.transcribe``. Reports
wall and process CPU seconds per decode (CPU time is less distorted by a shared machine).
Also sweeps ``--threads`` and ``--compute-types`` at batch 1 and the largest batch.

    python benchmarks/bench_engine.py --batches 1,2,4,8,16 --threads 1,2 \\
        --compute-types int8,int8_float32,float32 --out benchmarks/results/engine.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from echopanel.asr.engine.executor import DecodeEngine, engine_model_class
from echopanel.asr.whisper import default_model_path

OPTIONS: dict[str, Any] = dict(
    language="en",
    best_of=1,
    temperature=0.0,
    condition_on_previous_text=False,
    word_timestamps=True,
    vad_filter=False,
    compression_ratio_threshold=None,
    log_prob_threshold=None,
    no_speech_threshold=None,
)


def measure(fn: Any, repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``fn()``."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def bench(
    compute_type: str, threads: int, batches: list[int], audio: np.ndarray, beam: int, repeats: int
) -> list[dict[str, Any]]:
    model = engine_model_class()(
        str(default_model_path()),
        device="cpu",
        compute_type=compute_type,
        cpu_threads=threads,
        local_files_only=True,
    )
    frames = int(max(10.0, np.ceil(len(audio) / 16000 + 2)) * 100)
    options = {**OPTIONS, "beam_size": beam, "max_new_tokens": int(16 + 8 * len(audio) / 16000)}
    engine = DecodeEngine(model)
    rows = []

    def alone() -> None:
        model.encode_frames = frames
        segments, _ = model.transcribe(audio, **options)
        list(segments)
        model.encode_frames = None

    alone()  # warm-up
    wall1, cpu1 = measure(alone, repeats)
    for b in batches:

        def batched(b: int = b) -> None:
            gate = threading.Barrier(b)

            def run() -> None:
                gate.wait()
                engine.transcribe(audio, stream="x", final=False, frames=frames, options=options)

            threads_ = [threading.Thread(target=run) for _ in range(b)]
            for t in threads_:
                t.start()
            for t in threads_:
                t.join()

        wall, cpu = measure(batched, repeats)
        rows.append(
            {
                "compute_type": compute_type,
                "threads": threads,
                "beam": beam,
                "batch": b,
                "wall_per_decode_ms": round(1000 * wall / b, 1),
                "cpu_per_decode_ms": round(1000 * cpu / b, 1),
                "alone_wall_ms": round(1000 * wall1, 1),
                "alone_cpu_ms": round(1000 * cpu1, 1),
            }
        )
        print(rows[-1], flush=True)
    engine.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jfk", default="echopanel/data/jfk.flac")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--batches", default="1,2,4,8,16")
    p.add_argument("--threads", default="2")
    p.add_argument("--compute-types", default="int8")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/engine.json")
    args = p.parse_args()
    from faster_whisper import decode_audio

    audio = decode_audio(args.jfk, sampling_rate=16000)[: int(args.seconds * 16000)]
    batches = [int(x) for x in args.batches.split(",")]
    rows: list[dict[str, Any]] = []
    for ct in args.compute_types.split(","):
        for th in [int(x) for x in args.threads.split(",")]:
            rows += bench(ct, th, batches, audio, args.beam, args.repeats)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python benchmarks/bench_engine.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "cpus": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
