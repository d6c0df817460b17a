"""Load-balancer benchmark: what HAProxy in front of two replicas costs and how fast it reacts.

Run from the repository root (needs Debian's ``haproxy``; ~1 min; writes
``benchmarks/results/lb.json``)::

    python benchmarks/bench_lb.py
    python benchmarks/bench_lb.py --sessions 50 --check-inter 500ms

Two ``echopanel serve --asr fake`` replicas and HAProxy with the shipped
``deploy/haproxy/haproxy.cfg`` (check interval ``--check-inter``, default the config's 2 s),
all on loopback; the client is ``WebSocketTransport`` in this process, on the same cores.
Measured:

1. connect → ``status: streaming`` latency (p50/p99) over N sequential sessions, straight to
   a replica and through HAProxy with a routing key;
2. how long a replica that just became full (``--max-sessions`` 1) keeps being in HAProxy's
   rotation (``/ready`` turns 503 at once; the balancer sees it at its next check) and how
   long it takes to come back once the slot frees (two good checks, ``rise 2``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
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
from echopanel.session.config import auth_headers, normalize_url, with_routing_key

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
TOKEN = "bench-lb-token"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


async def _session(url: str, session_id: str) -> tuple[float, WebSocketTransport]:
    """Connect → start → streaming; the latency and the open transport."""
    started = time.perf_counter()
    transport = WebSocketTransport(connect_timeout=10.0)
    await transport.connect(with_routing_key(normalize_url(url), session_id), auth_headers(TOKEN))
    await transport.send_text(
        json.dumps({"type": "start", "session_id": session_id, "attempt_id": "a1"})
    )
    while json.loads(await transport.receive()).get("state") != "streaming":
        pass
    return time.perf_counter() - started, transport


async def _latencies(url: str, count: int, prefix: str) -> dict[str, float]:
    values = []
    for i in range(count):
        elapsed, transport = await _session(url, f"{prefix}-{i}")
        values.append(elapsed)
        await transport.aclose()
        await anyio.sleep(0.02)  # let the slot go before the next one
    values.sort()
    return {
        "sessions": count,
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 2),
        "max_ms": round(values[-1] * 1000, 2),
    }


async def _status(stats_port: int) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        text = (await client.get(f"http://127.0.0.1:{stats_port}/stats;csv")).text
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == "echopanel_replicas"}


async def _until(stats_port: int, name: str, word: str, limit: float = 30.0) -> float:
    started = time.perf_counter()
    with anyio.fail_after(limit):
        while True:
            if (await _status(stats_port)).get(name, "").startswith(word):
                return time.perf_counter() - started
            await anyio.sleep(0.01)


async def _reaction(lb_url: str, stats_port: int, direct: dict[str, str], rounds: int) -> Any:
    out_of_rotation, back = [], []
    for i in range(rounds):
        await _until(stats_port, "replica1", "UP")
        await _until(stats_port, "replica2", "UP")
        _, transport = await _session(lb_url, f"fill-{i}")
        # which replica is full: the one whose /ready says so
        async with httpx.AsyncClient() as client:
            answers = {
                name: (await client.get(f"{url}/ready")).status_code for name, url in direct.items()
            }
        (full,) = [name for name, code in answers.items() if code == 503]
        out_of_rotation.append(await _until(stats_port, full, "DOWN"))
        await transport.aclose()
        back.append(await _until(stats_port, full, "UP"))
    return {
        "rounds": rounds,
        "full_to_out_of_rotation_s": {
            "median": round(statistics.median(out_of_rotation), 3),
            "max": round(max(out_of_rotation), 3),
        },
        "slot_freed_to_back_in_rotation_s": {
            "median": round(statistics.median(back), 3),
            "max": round(max(back), 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--check-inter", default="2s")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lb.json")
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = [_free_port(), _free_port()]
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "echopanel",
                        "serve",
                        "--asr",
                        "fake",
                        "--port",
                        str(port),
                        "--max-sessions",
                        "1",
                        "--log-level",
                        "warning",
                    ],
                    env={**os.environ, "ECHOPANEL_TOKEN": TOKEN},
                )
            )
        for port in ports:
            _wait(f"http://127.0.0.1:{port}/ready")
        lb_port, stats_port = _free_port(), _free_port()
        procs.append(
            subprocess.Popen(
                [haproxy, "-db", "-f", str(CONFIG)],
                env={
                    **os.environ,
                    "ECHOPANEL_LB_BIND": f"127.0.0.1:{lb_port}",
                    "ECHOPANEL_LB_STATS_BIND": f"127.0.0.1:{stats_port}",
                    "ECHOPANEL_REPLICA_1": f"127.0.0.1:{ports[0]}",
                    "ECHOPANEL_REPLICA_2": f"127.0.0.1:{ports[1]}",
                    "ECHOPANEL_LB_CHECK_INTER": args.check_inter,
                },
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        _wait(f"http://127.0.0.1:{stats_port}/stats")
        direct = {
            "replica1": f"http://127.0.0.1:{ports[0]}",
            "replica2": f"http://127.0.0.1:{ports[1]}",
        }
        lb_url = f"ws://127.0.0.1:{lb_port}"

        async def run() -> dict[str, Any]:
            await _until(stats_port, "replica1", "UP")
            await _until(stats_port, "replica2", "UP")
            return {
                "direct": await _latencies(direct["replica1"], args.sessions, "direct"),
                "through_haproxy": await _latencies(lb_url, args.sessions, "lb"),
                "check_inter": args.check_inter,
                "reaction": await _reaction(lb_url, stats_port, direct, args.rounds),
            }

        results = anyio.run(run)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
    results["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "haproxy": subprocess.run(
            [haproxy, "-v"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
