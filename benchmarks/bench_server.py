"""Server benchmark: start-acknowledgment latency and concurrent-session capacity.

Run from the repository root::

    python benchmarks/bench_server.py   # full run, ~3 min; writes benchmarks/results/server.json
    python benchmarks/bench_server.py --quick    # smoke run
    python benchmarks/bench_server.py --asr whisper --sessions 1,4,8,16 \
        --speech ../shared/data/speech               # real model: see bench_sessions.py

The server runs in a subprocess (``uvicorn`` + the fake ASR, as ``echopanel serve --asr
fake`` does); the clients are ``WebSocketTransport`` instances in this process, on the same
machine. Measured:

1. connect → ``status: streaming`` latency (p50/p99) over N sequential sessions;
2. the same with 8 clients at once (N sessions in all);
3. how many concurrent sessions, each streaming real-time-paced audio (100 ms frames), the
   server holds before any ``status: backpressure`` / dropped frame (and, stricter, while
   the ingest backlog stays under 0.5 s at degrade level 0) — with a free fake ASR
   (server overhead only) and with a fake model that costs 5 % of real time per stream,
   serialised on one inference slot (like one shared model: ~20 streams of capacity).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx

from echopanel.client.transport import WebSocketTransport
from echopanel.errors import TransportError
from echopanel.protocol import encode_audio_frame

KEEPING_UP_BACKLOG = 0.5  # seconds queued: above this the ASR is falling behind
FRAME = encode_audio_frame("system", b"\x01\x00" * 1600)  # 100 ms

SERVER_CODE = """
import sys
from echopanel.server import ServerConfig, create_app, run_server
from echopanel.testing.asr import FakeAsrBackend
port, ratio, limit = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
config = ServerConfig(asr="fake", port=port, max_sessions=1000, slot_timeout=5.0)
asr = FakeAsrBackend(inference_ratio=ratio, max_concurrency=limit or None)
run_server(config, app=create_app(config, asr=asr), log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """The backend in a subprocess."""

    def __init__(self, ratio: float = 0.0, limit: int = 0) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_CODE, str(self.port), str(ratio), str(limit)]
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


async def _one_session(url: str, index: int) -> float:
    """Connect, start, wait for streaming; returns the latency; then disconnects."""
    transport = WebSocketTransport(ping_interval=None)
    began = time.perf_counter()
    await transport.connect(url, {})
    start = {"type": "start", "session_id": f"b{index}", "attempt_id": "1", "sources": ["system"]}
    await transport.receive()  # connected
    await transport.send_text(json.dumps(start))
    while json.loads(await transport.receive()).get("state") != "streaming":
        pass
    latency = time.perf_counter() - began
    await transport.aclose()
    return latency


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "max_ms": round(1000 * ordered[-1], 2),
    }


async def bench_latency(url: str, sessions: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    per_worker = sessions // concurrency

    async def worker(w: int) -> None:
        for i in range(per_worker):
            latencies.append(await _one_session(url, w * per_worker + i))

    await _one_session(url, -1)  # warm-up
    async with anyio.create_task_group() as tg:
        for w in range(concurrency):
            tg.start_soon(worker, w)
    return _percentiles(latencies)


async def _streamer(url: str, index: int, seconds: float, out: dict[str, Any]) -> None:
    transport = WebSocketTransport(ping_interval=None, connect_timeout=20)
    try:
        await transport.connect(url, {})
        await transport.receive()
        start = {
            "type": "start",
            "session_id": f"c{index}",
            "attempt_id": "1",
            "sources": ["system"],
        }
        await transport.send_text(json.dumps(start))

        async def reader() -> None:
            while True:
                msg = json.loads(await transport.receive())
                if msg.get("state") == "backpressure":
                    out["backpressure"] += 1
                if msg["type"] == "metrics":
                    out["max_backlog"] = max(out["max_backlog"], msg["backlog_seconds"])
                    out["max_level"] = max(out["max_level"], msg["degrade_level"])
                if msg["type"] == "final_summary":
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            began = anyio.current_time()
            for n in range(int(seconds * 10)):
                await anyio.sleep_until(began + n * 0.1)
                await transport.send_bytes(FRAME)
            out["late"] = max(out["late"], anyio.current_time() - (began + seconds))
            await transport.send_text(json.dumps({"type": "stop", "session_id": f"c{index}"}))
    except TransportError as exc:
        if exc.close_code != 1000:
            out["errors"] += 1
    finally:
        await transport.aclose()


async def bench_capacity_step(server: Server, sessions: int, seconds: float) -> dict[str, Any]:
    dropped_before = server.metric('echopanel_frames_dropped_total{source="system"}')
    out: dict[str, Any] = {
        "backpressure": 0,
        "max_backlog": 0.0,
        "max_level": 0,
        "late": 0.0,
        "errors": 0,
    }
    async with anyio.create_task_group() as tg:
        for i in range(sessions):
            tg.start_soon(_streamer, server.url, i, seconds, out)
    dropped = server.metric('echopanel_frames_dropped_total{source="system"}') - dropped_before
    return {
        "sessions": sessions,
        **out,
        "frames_dropped": int(dropped),
        "late": round(out["late"], 3),
    }


async def bench_capacity(server: Server, steps: list[int], seconds: float) -> dict[str, Any]:
    results = []
    held = kept_up = 0
    for n in steps:
        result = await bench_capacity_step(server, n, seconds)
        results.append(result)
        print("   ", result, flush=True)
        if result["backpressure"] or result["frames_dropped"] or result["errors"]:
            break
        held = n
        if result["max_backlog"] < KEEPING_UP_BACKLOG and result["max_level"] == 0:
            kept_up = n
    return {"kept_up_at_level_0": kept_up, "held_without_backpressure": held, "steps": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small numbers, for a smoke run")
    parser.add_argument("--out", default=None, help="JSON results file")
    parser.add_argument(
        "--asr", choices=("fake", "whisper"), default="fake", help="whisper: bench_sessions.py"
    )
    parser.add_argument("--sessions", default="1,4,8,16", help="whisper: concurrent sessions")
    parser.add_argument("--jfk", default="echopanel/data/jfk.flac", help="whisper: the clip")
    parser.add_argument("--speech", help="whisper: ../shared/data/speech for natural speech")
    parser.add_argument("--speech-sessions", type=int, default=4)
    parser.add_argument("--threads", type=int, help="whisper: serve --threads")
    parser.add_argument("--max-batch", type=int, help="whisper: serve --max-batch")
    parser.add_argument("--compute-type", help="whisper: serve --compute-type")
    parser.add_argument("--device", help="whisper: serve --device")
    args = parser.parse_args()
    if args.asr == "whisper":
        import bench_sessions

        results_w = {
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "load_average_at_start": os.getloadavg(),
            },
            "command": " ".join(["python", *sys.argv]),
            **bench_sessions.run(args),
        }
        out_w = Path(args.out or "benchmarks/results/server_whisper.json")
        out_w.parent.mkdir(parents=True, exist_ok=True)
        out_w.write_text(json.dumps(results_w, indent=2) + "\n")
        print(json.dumps(results_w, indent=2))
        print(f"written to {out_w}")
        return 0
    args.out = args.out or "benchmarks/results/server.json"
    sessions = 40 if args.quick else 200
    seconds = 3.0 if args.quick else 8.0
    free_steps = [4, 8] if args.quick else [8, 16, 32, 64, 128, 192, 256]
    model_steps = [4, 8] if args.quick else [8, 12, 16, 18, 20, 22, 24, 28, 32, 40]
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "command": "python benchmarks/bench_server.py" + (" --quick" if args.quick else ""),
    }
    server = Server()
    try:
        print(f"start-ack latency, {sessions} sequential sessions ...", flush=True)
        results["ack_sequential"] = anyio.run(bench_latency, server.url, sessions, 1)
        print("   ", results["ack_sequential"], flush=True)
        print(f"start-ack latency, {sessions} sessions by 8 concurrent clients ...", flush=True)
        results["ack_concurrent_8"] = anyio.run(bench_latency, server.url, sessions, 8)
        print("   ", results["ack_concurrent_8"], flush=True)
        results["server_ack_histogram_count"] = server.metric("echopanel_start_ack_seconds_count")
        print(f"capacity, free fake ASR, {seconds:g} s real-time audio per session ...", flush=True)
        results["capacity_free_asr"] = anyio.run(bench_capacity, server, free_steps, seconds)
    finally:
        server.close()
    server = Server(ratio=0.05, limit=1)
    try:
        print(
            "capacity, fake model at 5 % of real time per stream, 1 inference slot ...", flush=True
        )
        results["capacity_model_5pct"] = anyio.run(bench_capacity, server, model_steps, seconds)
    finally:
        server.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
