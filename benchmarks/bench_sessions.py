"""Concurrent real-time Whisper sessions through ``echopanel serve`` (the decode engine).

Used by ``bench_server.py --asr whisper --sessions 1,4,8,16`` (see docs/benchmarks.md):
``echopanel serve --asr whisper`` runs in a subprocess; for each step N, N WebSocket clients
in this process each stream jfk.flac in real time (100 ms frames) followed by 3 s of
silence, then ``stop``. Per step: end of speech → last final (p50/max), speech onset → first
partial (p50/max), streams kept up (no dropped frame, no late frame, final within 3 s of the
end of speech), mean WER of the final transcripts, the highest degrade level and ingest
backlog, server CPU seconds and RSS, and the engine's mean batch size and queue wait (from
``/metrics``). ``--speech DIR`` adds the natural-speech check: ``--speech-sessions`` meetings
joined from the LibriSpeech files of ``DIR/manifest.tsv`` run concurrently, then one at a time.
"""

from __future__ import annotations

import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import jiwer
import numpy as np

from echopanel.client.transport import WebSocketTransport
from echopanel.errors import TransportError
from echopanel.protocol import encode_audio_frame

sys.path.insert(0, str(Path(__file__).resolve().parent))
from natural import speech_bounds  # benchmarks/natural.py

SR = 16000
FRAME_S = 0.1
TAIL_S = 3.0
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)
_NORM = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),  # type: ignore[no-untyped-call]
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def wer(ref: str, hyp: str) -> float:
    return float(jiwer.wer(ref, hyp, reference_transform=_NORM, hypothesis_transform=_NORM))


def load(path: Path) -> np.ndarray:
    from faster_whisper import decode_audio

    return np.asarray(decode_audio(str(path), sampling_rate=SR), dtype=np.float32)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WhisperServer:
    """``echopanel serve --asr whisper`` in a subprocess."""

    def __init__(self, extra: list[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "echopanel", "serve", "--asr", "whisper"]
        cmd += ["--port", str(self.port), "--max-sessions", "64", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd + extra)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{self.url}/health", timeout=2).json()
                if health.get("status") == "ok":
                    self.health = health
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError("server did not become ready")

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def stream_session(
    url: str, name: str, audio: np.ndarray, onset: float, end: float
) -> dict[str, Any]:
    """Stream ``audio`` + 3 s silence in real time; collect the session's timings."""
    pcm = (np.clip(np.concatenate([audio, np.zeros(int(TAIL_S * SR), np.float32)]), -1, 1)
           * 32767).astype("<i2").tobytes()  # fmt: skip
    step = int(FRAME_S * SR) * 2
    frames = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    out: dict[str, Any] = {
        "first_partial": None, "last_final_at": None, "max_level": 0, "max_backlog": 0.0,
        "late": 0.0, "dropped": 0, "text": "", "error": None,
    }  # fmt: skip
    transport = WebSocketTransport(ping_interval=None, connect_timeout=30)
    began = 0.0
    try:
        await transport.connect(url.replace("http", "ws"), {})
        await transport.receive()
        start = {"type": "start", "session_id": name, "attempt_id": "1", "sources": ["system"]}
        await transport.send_text(json.dumps(start))
        while json.loads(await transport.receive()).get("state") != "streaming":
            pass

        async def reader() -> None:
            while True:
                try:
                    msg = json.loads(await transport.receive())
                except TransportError as exc:
                    if exc.close_code != 1000:
                        out["error"] = out["error"] or f"closed {exc.close_code}"
                    return
                now = anyio.current_time() - began
                kind = msg["type"]
                if kind in ("asr_partial", "asr_final") and out["first_partial"] is None:
                    out["first_partial"] = now
                if kind == "asr_final":
                    out["last_final_at"] = now
                elif kind == "metrics":
                    out["max_level"] = max(out["max_level"], msg.get("degrade_level", 0))
                    out["max_backlog"] = max(out["max_backlog"], msg.get("backlog_seconds", 0))
                elif kind == "error":
                    out["error"] = msg.get("code")
                elif kind == "final_summary":
                    out["text"] = " ".join(e["text"] for e in msg["transcript"])
                    out["dropped"] = sum(
                        s.get("frames_dropped", 0) for s in msg.get("sources", {}).values()
                    )
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            began = anyio.current_time()
            for n, frame in enumerate(frames):
                await anyio.sleep_until(began + n * FRAME_S)
                out["late"] = max(out["late"], anyio.current_time() - (began + n * FRAME_S))
                await transport.send_bytes(encode_audio_frame("system", frame))
            await transport.send_text(json.dumps({"type": "stop", "session_id": name}))
    except TransportError as exc:
        if exc.close_code != 1000:
            out["error"] = out["error"] or f"closed {exc.close_code}"
    finally:
        await transport.aclose()
    out["first_partial_latency"] = (
        out["first_partial"] - onset if out["first_partial"] is not None else None
    )
    out["end_to_final"] = out["last_final_at"] - end if out["last_final_at"] is not None else None
    return out


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


async def run_step(
    server: WhisperServer, clips: list[tuple[str, np.ndarray, str]]
) -> dict[str, Any]:
    before = server.metrics()
    cpu0 = server.cpu_seconds()
    results: list[dict[str, Any]] = [{}] * len(clips)

    async def one(i: int) -> None:
        name, audio, _ref = clips[i]
        onset, end = speech_bounds(audio)
        results[i] = await stream_session(server.url, f"{name}-{i}", audio, onset, end)

    async with anyio.create_task_group() as tg:
        for i in range(len(clips)):
            tg.start_soon(one, i)
    after = server.metrics()
    cpu = server.cpu_seconds() - cpu0

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta("echopanel_asr_batch_size_count")
    wers = [wer(ref, r["text"]) for (_, _, ref), r in zip(clips, results, strict=True)]
    e2f = [r["end_to_final"] for r in results if r["end_to_final"] is not None]
    fp = [r["first_partial_latency"] for r in results if r["first_partial_latency"] is not None]
    kept = sum(
        1
        for r in results
        if not r["error"] and r["dropped"] == 0 and r["late"] < 0.5
        and r["end_to_final"] is not None and r["end_to_final"] <= 3.0
    )  # fmt: skip
    return {
        "sessions": len(clips),
        "kept_up": kept,
        "end_to_final_p50": _p50(e2f),
        "end_to_final_max": round(max(e2f), 3) if e2f else None,
        "first_partial_p50": _p50(fp),
        "first_partial_max": round(max(fp), 3) if fp else None,
        "wer_mean": round(statistics.mean(wers), 4),
        "wer_max": round(max(wers), 4),
        "max_degrade_level": max(r["max_level"] for r in results),
        "max_backlog": round(max(r["max_backlog"] for r in results), 3),
        "frames_dropped": sum(r["dropped"] for r in results),
        "max_late": round(max(r["late"] for r in results), 3),
        "errors": [r["error"] for r in results if r["error"]],
        "server_cpu_seconds": round(cpu, 2),
        "server_rss_mb": round(server.rss_mb(), 1),
        "decodes": int(delta("echopanel_asr_decodes_total")),
        "batches": int(batches),
        "mean_batch_size": round(delta("echopanel_asr_batch_size_sum") / batches, 2)
        if batches
        else None,
        "mean_queue_wait": round(
            delta("echopanel_asr_queue_wait_seconds_sum")
            / max(1.0, delta("echopanel_asr_queue_wait_seconds_count")),
            3,
        ),
        "texts": [r["text"] for r in results],
    }


def speech_meetings(
    directory: Path, count: int, seed: int = 9
) -> list[tuple[str, np.ndarray, str]]:
    """``count`` ~25 s "meetings": LibriSpeech files joined with 0.5-1.5 s pauses."""
    rows = [
        line.split("\t")
        for line in (directory / "manifest.tsv").read_text().splitlines()[1:]
        if line.strip()
    ]
    rows = [r for r in rows if "LibriSpeech" in r[4]]
    rng = random.Random(seed)
    rng.shuffle(rows)
    meetings = []
    for m in range(count):
        parts: list[np.ndarray] = []
        texts: list[str] = []
        while sum(len(p) for p in parts) < 25 * SR and rows:
            row = rows.pop()
            parts.append(load(directory / row[0]))
            parts.append(np.zeros(int(rng.uniform(0.5, 1.5) * SR), np.float32))
            texts.append(row[2])
        meetings.append((f"speech{m}", np.concatenate(parts), " ".join(texts)))
    return meetings


def run(args: Any) -> dict[str, Any]:
    """The whole whisper-mode benchmark (``bench_server.py --asr whisper``)."""
    jfk = load(Path(args.jfk))
    extra: list[str] = []
    for flag in ("threads", "max_batch", "compute_type", "device"):
        value = getattr(args, flag)
        if value is not None:
            extra += [f"--{flag.replace('_', '-')}", str(value)]
    server = WhisperServer(extra)
    results: dict[str, Any] = {"server_options": extra, "health_asr": server.health.get("asr")}
    try:
        steps = []
        for n in [int(x) for x in args.sessions.split(",")]:
            print(f"{n} real-time jfk sessions ...", flush=True)
            step = anyio.run(run_step, server, [("jfk", jfk, JFK_TEXT)] * n)
            print("   ", step, flush=True)
            steps.append(step)
        results["jfk_steps"] = steps
        if args.speech:
            meetings = speech_meetings(Path(args.speech), args.speech_sessions)
            print(f"{len(meetings)} natural-speech meetings, concurrently ...", flush=True)
            together = anyio.run(run_step, server, meetings)
            print("   ", together, flush=True)
            alone = []
            for meeting in meetings:
                alone.append(anyio.run(run_step, server, [meeting]))
            results["speech"] = {
                "concurrent": together,
                "alone_wer_mean": round(statistics.mean(a["wer_mean"] for a in alone), 4),
                "alone": alone,
            }
            print("    alone WER", results["speech"]["alone_wer_mean"], flush=True)
    finally:
        server.close()
    return results
