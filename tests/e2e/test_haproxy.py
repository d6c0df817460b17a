"""Two ``echopanel serve`` replicas behind a real HAProxy, on loopback.

The replicas are subprocesses (fake ASR, a token from ``ECHOPANEL_TOKEN``, free ports); the
balancer is Debian's ``haproxy`` running the shipped ``deploy/haproxy/haproxy.cfg`` unchanged,
pointed at them through its environment variables and with a short check interval. Which
replica took a connection is read from each replica's own ``/metrics``
(``echopanel_ws_connections_total``); what HAProxy thinks of each replica from its stats CSV.

Covered: keyed sessions spread over both replicas and come back to the same one after a
reconnect; a full replica (``/ready`` 503) gets no new sessions until a slot frees; with both
full the balancer refuses the upgrade; the real ``echopanel listen`` client reaches a replica
through HAProxy with its routing key; SIGTERM to a replica mid-session drains it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest

from echopanel.client.transport import WebSocketTransport
from echopanel.errors import EchoPanelError, TransportError
from echopanel.protocol import encode_audio_frame
from echopanel.session.config import auth_headers, normalize_url, with_routing_key
from echopanel.testing.asr import DEFAULT_WORDS

from ._helpers import child_env, cli, free_port

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (scripts/setup.sh does)"),
]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
FIXTURE = ROOT / "tests" / "fixtures" / "audio" / "numbers.flac"
TOKEN = "lb-test-token"
NAMES = ("replica1", "replica2")
FRAME_SECONDS = 0.1
PCM_FRAME = b"\x01\x00" * int(16000 * FRAME_SECONDS)


@attrs.define(eq=False)
class Replica:
    """One ``echopanel serve --asr fake`` subprocess."""

    name: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@attrs.define(eq=False)
class Cluster:
    """The replicas and the HAProxy in front of them."""

    replicas: dict[str, Replica]
    lb_port: int
    stats_port: int
    haproxy: subprocess.Popen[bytes]
    haproxy_log: Path

    def ws_url(self, key: str | None) -> str:
        url = normalize_url(f"ws://127.0.0.1:{self.lb_port}")
        return url if key is None else with_routing_key(url, key)

    async def server_status(self) -> dict[str, str]:
        """HAProxy's view: ``UP``, ``DOWN`` (possibly with a transition suffix), ``MAINT``..."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            text = (await client.get(f"http://127.0.0.1:{self.stats_port}/stats;csv")).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row["status"] for row in rows if row["pxname"] == "echopanel_replicas"
        }

    async def wait_status(self, wanted: dict[str, str], limit: float = 15.0) -> None:
        """Wait until every named replica's status starts with the wanted word."""
        status: dict[str, str] = {}
        with anyio.move_on_after(limit):
            while True:
                status = await self.server_status()
                if all(status.get(name, "").startswith(w) for name, w in wanted.items()):
                    return
                await anyio.sleep(0.05)
        raise AssertionError(f"HAProxy status {status}, wanted {wanted}\n{self.haproxy_output()}")

    async def connections(self) -> dict[str, float]:
        """``echopanel_ws_connections_total`` of each replica still answering."""
        counts: dict[str, float] = {}
        async with httpx.AsyncClient(timeout=5.0) as client:
            for name, replica in self.replicas.items():
                try:
                    response = await client.get(
                        f"{replica.url}/metrics", headers={"authorization": f"Bearer {TOKEN}"}
                    )
                except httpx.HTTPError:
                    continue
                for line in response.text.splitlines():
                    if line.startswith("echopanel_ws_connections_total "):
                        counts[name] = float(line.split()[-1])
        return counts

    async def ready(self, name: str) -> int:
        async with httpx.AsyncClient(timeout=5.0) as client:
            return (await client.get(f"{self.replicas[name].url}/ready")).status_code

    def haproxy_output(self) -> str:
        return self.haproxy_log.read_text(errors="replace")[-4000:]


class LiveSession:
    """One session through the balancer, speaking the wire protocol."""

    def __init__(self, transport: WebSocketTransport, session_id: str, replica: str) -> None:
        self.t = transport
        self.session_id = session_id
        self.replica = replica
        self.received: list[dict[str, Any]] = []
        self.audio_sent = 0.0

    async def recv(self, limit: float = 10.0) -> dict[str, Any]:
        with anyio.fail_after(limit):
            msg: dict[str, Any] = json.loads(await self.t.receive())
        self.received.append(msg)
        return msg

    async def expect(self, kind: str, limit: float = 10.0) -> dict[str, Any]:
        with anyio.fail_after(limit):
            while True:
                msg = await self.recv(limit)
                assert msg["type"] != "error", msg
                if msg["type"] == kind:
                    return msg

    async def audio(self, seconds: float) -> None:
        """Send ``seconds`` of audio in 100 ms frames, a little faster than real time."""
        for _ in range(round(seconds / FRAME_SECONDS)):
            await self.t.send_bytes(encode_audio_frame("system", PCM_FRAME))
            self.audio_sent += FRAME_SECONDS
            await anyio.sleep(FRAME_SECONDS / 4)

    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == "asr_final"]

    async def aclose(self) -> None:
        await self.t.aclose()


async def open_session(
    cluster: Cluster, session_id: str, key: str | None = "same", attempt: str = "a1"
) -> LiveSession:
    """Connect through HAProxy (routing key ``key``; ``"same"``: the session id), start,
    wait for ``streaming``; find the replica that took it from the connection counters."""
    before = await cluster.connections()
    transport = WebSocketTransport(connect_timeout=5.0)
    await transport.connect(
        cluster.ws_url(session_id if key == "same" else key), auth_headers(TOKEN)
    )
    session = LiveSession(transport, session_id, "")
    assert (await session.recv()).get("state") == "connected", session.received
    after = await cluster.connections()  # counted before `connected` was sent
    grown = [name for name in after if after[name] > before.get(name, 0.0)]
    assert len(grown) == 1, (before, after)
    session.replica = grown[0]
    await transport.send_text(
        json.dumps(
            {
                "type": "start",
                "session_id": session_id,
                "attempt_id": attempt,
                "sources": ["system"],
            }
        )
    )
    with anyio.fail_after(10):
        while (await session.recv()).get("state") != "streaming":
            assert session.received[-1]["type"] != "error", session.received[-1]
    return session


async def stop(session: LiveSession) -> dict[str, Any]:
    await session.t.send_text(json.dumps({"type": "stop", "session_id": session.session_id}))
    summary = await session.expect("final_summary")
    await session.aclose()
    return summary


# --------------------------------------------------------------------------- processes


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready: {log.read_text(errors='replace')}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _serve_args(port: int, max_sessions: int) -> list[str]:
    return [
        *("serve", "--asr", "fake", "--host", "127.0.0.1", "--port", str(port)),
        *("--max-sessions", str(max_sessions), "--slot-timeout", "0.5", "--log-level", "info"),
    ]


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """Two replicas (``--max-sessions`` from the indirect parameter, default 4) + HAProxy."""
    max_sessions = int(getattr(request, "param", 4))
    procs: list[subprocess.Popen[bytes]] = []
    replicas: dict[str, Replica] = {}
    try:
        for name in NAMES:
            port = free_port()
            log = tmp_path / f"{name}.log"
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    cli(*_serve_args(port, max_sessions)),
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=child_env(ECHOPANEL_TOKEN=TOKEN),
                )
            procs.append(proc)
            replicas[name] = Replica(name=name, port=port, log=log, proc=proc)
        for replica in replicas.values():
            _wait_http(f"{replica.url}/ready", replica.proc, replica.name, replica.log)
        lb_port, stats_port = free_port(), free_port()
        haproxy_log = tmp_path / "haproxy.log"
        assert HAPROXY is not None
        with haproxy_log.open("wb") as sink:
            haproxy = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(CONFIG)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "ECHOPANEL_LB_BIND": f"127.0.0.1:{lb_port}",
                    "ECHOPANEL_LB_STATS_BIND": f"127.0.0.1:{stats_port}",
                    "ECHOPANEL_REPLICA_1": f"127.0.0.1:{replicas['replica1'].port}",
                    "ECHOPANEL_REPLICA_2": f"127.0.0.1:{replicas['replica2'].port}",
                    "ECHOPANEL_LB_CHECK_INTER": "100ms",
                    "ECHOPANEL_LB_DOWN_INTER": "100ms",
                },
            )
        procs.append(haproxy)
        _wait_http(f"http://127.0.0.1:{stats_port}/stats", haproxy, "haproxy", haproxy_log)
        yield Cluster(
            replicas=replicas,
            lb_port=lb_port,
            stats_port=stats_port,
            haproxy=haproxy,
            haproxy_log=haproxy_log,
        )
    finally:
        for proc in reversed(procs):
            _stop(proc)


# --------------------------------------------------------------------------- tests

KEYS = [f"meeting-{i:02d}" for i in range(12)]


async def test_keyed_sessions_spread_over_both_and_return_after_a_reconnect(cluster):
    await cluster.wait_status({"replica1": "UP", "replica2": "UP"})
    placed: dict[str, str] = {}
    for key in KEYS:
        session = await open_session(cluster, key)
        placed[key] = session.replica
        await session.audio(0.3)
        await session.aclose()  # dropped without stop, as a network failure would
    assert set(placed.values()) == set(NAMES), placed  # both replicas took sessions
    for key in KEYS:  # reconnect: a new attempt of the same session, same routing key
        session = await open_session(cluster, key, attempt="a2")
        assert session.replica == placed[key], (key, placed)
        summary = await stop(session)
        assert summary["session_id"] == key


@pytest.mark.parametrize("cluster", [1], indirect=True)
async def test_a_full_replica_gets_no_new_sessions_until_a_slot_frees(cluster):
    await cluster.wait_status({"replica1": "UP", "replica2": "UP"})
    first = await open_session(cluster, "first")
    full, other = first.replica, next(n for n in NAMES if n != first.replica)
    assert await cluster.ready(full) == 503
    await cluster.wait_status({full: "DOWN", other: "UP"})
    # the same routing key hashes to the full replica: it goes to the other one instead
    second = await open_session(cluster, "second", key="first")
    assert second.replica == other
    await cluster.wait_status({full: "DOWN", other: "DOWN"})
    # both full: the balancer refuses the upgrade, nothing reaches a replica
    before = await cluster.connections()
    with pytest.raises(TransportError):
        transport = WebSocketTransport(connect_timeout=5.0)
        await transport.connect(cluster.ws_url("third"), auth_headers(TOKEN))
    assert await cluster.connections() == before
    # established sessions were not cut by their replica leaving the rotation
    await first.audio(0.5)
    await second.audio(0.5)
    assert (await stop(first))["sources"]["system"]["audio_seconds"] >= 0.5
    await cluster.wait_status({full: "UP"})
    again = await open_session(cluster, "again", key="first")
    assert again.replica == full  # back in rotation, the key is hashed to it again
    await stop(again)
    await stop(second)


async def test_the_listen_cli_reaches_a_replica_through_haproxy_with_its_key(cluster, tmp_path):
    await cluster.wait_status({"replica1": "UP", "replica2": "UP"})
    before = await cluster.connections()
    args = ["listen", "--url", f"ws://127.0.0.1:{cluster.lb_port}", "--source", f"file:{FIXTURE}"]
    result = await anyio.run_process(
        cli(*args, "--fast", "--json", "--no-bundle"),
        env=child_env(ECHOPANEL_TOKEN=TOKEN),
        check=False,
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    summary = next(e for e in events if e["event"] == "summary")
    session_id = summary.get("session_id") or next(
        e["session_id"] for e in events if e.get("session_id")
    )
    after = await cluster.connections()
    assert sum(after.values()) == sum(before.values()) + 1
    # HAProxy saw the routing key in the request line it balanced on
    with anyio.fail_after(5):
        while True:
            if f"?session={session_id}" in cluster.haproxy_output():
                break
            await anyio.sleep(0.05)


async def test_sigterm_drains_a_replica_mid_session(cluster):
    await cluster.wait_status({"replica1": "UP", "replica2": "UP"})
    session = await open_session(cluster, "draining-meeting")
    victim = cluster.replicas[session.replica]
    other = next(n for n in NAMES if n != session.replica)
    await session.audio(2.0)  # five fake words: at least one final before the signal
    await session.expect("asr_final")
    victim.proc.send_signal(signal.SIGTERM)
    # as soon as the victim stops being ready — before HAProxy's next check, maybe — a new
    # session keyed to it lands on the other replica (a 503 or a refused connect is retried)
    with anyio.fail_after(10):
        while True:
            try:
                if await cluster.ready(session.replica) != 200:
                    break
            except httpx.HTTPError:
                break
            await anyio.sleep(0.01)
    early = await open_session(cluster, "draining-meeting", attempt="early")
    assert early.replica == other
    # its session ends with everything it was sent: finals flushed, then the summary
    summary = await session.expect("final_summary", limit=30)
    try:
        with anyio.fail_after(10):
            while True:
                await session.recv()
    except (TransportError, EchoPanelError) as exc:
        assert getattr(exc, "close_code", None) in (1000, 1001), exc
    words = " ".join(seg["text"] for seg in summary["transcript"]).split()
    assert words == list(DEFAULT_WORDS[:5]), summary["transcript"]
    live = {f["segment_id"] for f in session.finals()}
    assert live <= {seg["segment_id"] for seg in summary["transcript"]}
    assert summary["sources"]["system"]["audio_seconds"] == pytest.approx(session.audio_sent)
    assert summary["sources"]["system"]["frames_dropped"] == 0
    # new sessions, even keyed to the draining replica, go to the other one
    await cluster.wait_status({session.replica: "DOWN", other: "UP"})
    await stop(early)
    for attempt in ("b1", "b2"):
        fresh = await open_session(cluster, "draining-meeting", attempt=attempt)
        assert fresh.replica == other
        await stop(fresh)
    with anyio.fail_after(30):
        while True:
            if victim.proc.poll() is not None:
                break
            await anyio.sleep(0.05)
    assert victim.proc.returncode == 0, victim.output()


def test_haproxy_accepts_the_shipped_config():
    assert HAPROXY is not None
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(CONFIG)],
        capture_output=True,
        env={
            **os.environ,
            "ECHOPANEL_REPLICA_1": "127.0.0.1:1",
            "ECHOPANEL_REPLICA_2": "127.0.0.1:2",
        },
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr
