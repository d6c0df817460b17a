"""Random clients while a real ``echopanel serve`` gets SIGTERM: nothing hangs, nothing is lost.

Per seed: one server subprocess (fake ASR), a few clients each playing a random script
(start, audio, stop, idling, vanishing, reconnecting), and SIGTERM at a random moment.
Invariants: every client ends within a bound; no connection is closed with uvicorn's 1012;
the server exits 0; every session that got ``final_summary`` finds in it every final it was
sent. With the connections' drain (issue #10 item 6) also: every acknowledged session that
neither vanished nor got an error ends with ``final_summary``.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
from typing import Any

import anyio
import anyio.to_thread
import attrs
import pytest

from echopanel.client.transport import WebSocketTransport
from echopanel.errors import TransportError
from echopanel.protocol import encode_audio_frame

PCM = b"\x01\x00" * 1600  # 0.1 s
MOVES = ["start", "audio", "audio", "audio5", "audio5", "stop", "sleep", "vanish"]
OK_CLOSES = {1000, 1001, 1003, 1007, 1008, 1009, 1011, 1013}
SERVE_ARGS = (
    "--max-sessions", "3", "--slot-timeout", "0.3", "--start-timeout", "3",
    "--drain-timeout", "6",
)  # fmt: skip


@attrs.define
class Outcome:
    acknowledged: bool = False
    finals: list[str] = attrs.field(factory=list)
    summary: dict | None = None
    error: str | None = None
    close_code: int | None = None
    vanished: bool = False
    refused: bool = False


async def _play(url: str, name: str, moves: list[str], out: Outcome) -> None:
    transport = WebSocketTransport(connect_timeout=5, ping_interval=None)

    async def read(scope: anyio.CancelScope) -> None:
        try:
            while True:
                msg = json.loads(await transport.receive())
                if msg["type"] == "status" and msg.get("state") == "streaming":
                    out.acknowledged = True
                elif msg["type"] == "asr_final":
                    out.finals.append(msg["segment_id"])
                elif msg["type"] == "final_summary":
                    out.summary = msg
                elif msg["type"] == "error" and msg["code"] != "invalid_message":
                    out.error = msg["code"]
        except TransportError as exc:  # the server ended the connection
            out.close_code = exc.close_code
            scope.cancel()

    async def send(moves: list[str]) -> None:
        with contextlib.suppress(TransportError):  # closed meanwhile: the reader records it
            for move in moves:
                if move == "start":
                    start = {"type": "start", "session_id": name, "attempt_id": "1",
                             "sources": ["system"]}  # fmt: skip
                    await transport.send_text(json.dumps(start))
                elif move == "audio":
                    await transport.send_bytes(encode_audio_frame("system", PCM))
                elif move == "audio5":
                    for _ in range(5):
                        await transport.send_bytes(encode_audio_frame("system", PCM))
                elif move == "stop":
                    await transport.send_text(json.dumps({"type": "stop", "session_id": name}))
                elif move == "sleep":
                    await anyio.sleep(0.2)
                elif move == "vanish":
                    out.vanished = True
                    await transport._stream.aclose()
                    return

    try:
        try:
            await transport.connect(url, {})
        except TransportError:
            out.refused = True  # e.g. HTTP 503 while draining
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, tg.cancel_scope)
            await send(moves)
            if out.vanished:
                tg.cancel_scope.cancel()
            # else: wait (bounded by the caller) until the server ends the connection
    finally:
        await transport.aclose()


async def _run(h: Any, seed: int, *, keep_one_live: bool = False) -> list[Outcome]:
    rng = random.Random(seed)
    scripts = [
        ["start", *rng.choices(MOVES, k=rng.randint(2, 7))] for _ in range(rng.randint(2, 4))
    ]
    if keep_one_live:  # streams through the SIGTERM and never stops by itself
        scripts.insert(0, ["start", "audio5", "audio5", *["sleep"] * 6])
    outcomes = [Outcome() for _ in scripts]
    with h.serve_process(*SERVE_ARGS) as (proc, url):
        await h.process_ready(proc, url)

        async def terminate() -> None:
            await anyio.sleep(rng.uniform(0.1, 0.8))
            proc.send_signal(signal.SIGTERM)

        with anyio.fail_after(30):  # nothing hangs: drain timeout 6 s + flushes + exit
            async with anyio.create_task_group() as tg:
                tg.start_soon(terminate)
                for i, (moves, out) in enumerate(zip(scripts, outcomes, strict=True)):
                    tg.start_soon(_play, url, f"s{seed}-{i}", moves, out)
            status = await anyio.to_thread.run_sync(lambda: proc.wait(timeout=20))
        output = proc.stdout.read() if proc.stdout else ""
    assert status == 0, output
    assert "Traceback" not in output, output
    for out in outcomes:
        assert out.close_code is None or out.close_code in OK_CLOSES, out  # never 1012
        if out.summary is not None:  # nothing acknowledged is lost
            kept = {entry["segment_id"] for entry in out.summary["transcript"]}
            assert set(out.finals) <= kept, out
    return outcomes


@pytest.mark.parametrize("seed", range(4))
async def test_random_clients_under_sigterm_end_cleanly(h, seed):
    await _run(h, seed)


@pytest.mark.parametrize("seed", [11, 12])
async def test_random_clients_under_sigterm_all_get_their_summary(h, seed):
    outcomes = await _run(h, seed, keep_one_live=True)
    live = [o for o in outcomes if o.acknowledged and not o.vanished and o.error is None]
    assert outcomes[0] in live
    assert all(o.summary is not None for o in live), outcomes
