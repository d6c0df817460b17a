"""Random sequences of client behaviours against one real server leave it healthy.

Each hypothesis example runs a few clients, each doing a random script of good and bad
moves (garbage, unknown types, audio before start, oversize frames, bad starts, second
starts, wrong stops, double stops, vanishing, idling past the start timeout). Afterwards:
``active_sessions`` is back to 0, ``/health`` answers, no connection handler is left, and a
well-behaved client still gets a transcript.
"""

from __future__ import annotations

import json

import anyio
import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echopanel.client.transport import WebSocketTransport
from echopanel.errors import TransportError
from echopanel.protocol import MAX_FRAME_BYTES, encode_audio_frame
from echopanel.server import ServerConfig, serve_in_thread
from echopanel.testing.asr import FakeAsrBackend

PCM = b"\x01\x00" * 1600  # 0.1 s

MOVES = st.sampled_from(
    [
        "start",
        "start",
        "bad_start",
        "bad_format",
        "audio",
        "audio",
        "audio_b64",
        "audio_mic",
        "garbage",
        "unknown_type",
        "odd_frame",
        "huge_frame",
        "stop",
        "stop_other",
        "sleep",
        "vanish",
        "close",
    ]
)


async def _play(url: str, moves: list[str]) -> None:
    transport = WebSocketTransport(connect_timeout=5, ping_interval=None)
    try:
        await transport.connect(url, {})
        for move in moves:
            if move == "start":
                await transport.send_text(
                    json.dumps(
                        {
                            "type": "start",
                            "session_id": "r",
                            "attempt_id": "1",
                            "sources": ["system"],
                        }
                    )
                )
            elif move == "bad_start":
                await transport.send_text('{"type":"start","session_id":"","attempt_id":"1"}')
            elif move == "bad_format":
                await transport.send_text(
                    '{"type":"start","session_id":"r","attempt_id":"1","sample_rate":8000}'
                )
            elif move == "audio":
                await transport.send_bytes(encode_audio_frame("system", PCM))
            elif move == "audio_b64":
                await transport.send_text('{"type":"audio","source":"system","data":"AAAAAA=="}')
            elif move == "audio_mic":
                await transport.send_bytes(encode_audio_frame("mic", PCM))
            elif move == "garbage":
                await transport.send_text("}{")
            elif move == "unknown_type":
                await transport.send_text('{"type":"dance"}')
            elif move == "odd_frame":
                await transport.send_bytes(b"EP\x01\x00\x00")
            elif move == "huge_frame":
                await transport.send_bytes(b"\x00" * (MAX_FRAME_BYTES + 2))
            elif move == "stop":
                await transport.send_text('{"type":"stop","session_id":"r"}')
            elif move == "stop_other":
                await transport.send_text('{"type":"stop","session_id":"zzz"}')
            elif move == "sleep":
                await anyio.sleep(0.15)
            elif move == "vanish":
                await transport._stream.aclose()
                return
            elif move == "close":
                break
        with anyio.move_on_after(0.3):
            while True:
                await transport.receive()
    except TransportError:
        pass
    finally:
        await transport.aclose()


async def _check_healthy(url: str) -> None:
    async with httpx.AsyncClient() as http:
        with anyio.fail_after(10):
            while True:
                health = (await http.get(f"{url}/health")).json()
                metrics = (await http.get(f"{url}/metrics")).text
                if "echopanel_active_sessions 0.0" in metrics and health["connections"] == 0:
                    break
                await anyio.sleep(0.05)
        assert health["status"] == "ok" and health["sessions"]["available"] == 3


async def _good_client(url: str) -> dict:
    transport = WebSocketTransport(ping_interval=None)
    await transport.connect(url, {})
    start = {"type": "start", "session_id": "good", "attempt_id": "1", "sources": ["system"]}
    await transport.send_text(json.dumps(start))
    for _ in range(20):
        await transport.send_bytes(encode_audio_frame("system", PCM))
    await transport.send_text('{"type":"stop","session_id":"good"}')
    with anyio.fail_after(10):
        while True:
            msg = json.loads(await transport.receive())
            if msg["type"] == "final_summary":
                await transport.aclose()
                return msg


CONFIG = ServerConfig(
    asr="fake",
    max_sessions=3,
    slot_timeout=0.2,
    start_timeout=0.5,
    flush_timeout=1.0,
    metrics_interval=0.1,
    analysis_interval=0.1,
)


def test_random_client_behaviour_leaves_server_healthy():
    with serve_in_thread(CONFIG, asr=FakeAsrBackend(inference_delay=0.01)) as url:

        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            derandomize=True,
        )
        @given(st.lists(st.lists(MOVES, max_size=8), min_size=1, max_size=4))
        def run(scripts: list[list[str]]) -> None:
            async def main() -> None:
                async with anyio.create_task_group() as tg:
                    for moves in scripts:
                        tg.start_soon(_play, url, moves)
                await _check_healthy(url)

            anyio.run(main)

        run()

        async def final() -> dict:
            await _check_healthy(url)
            return await _good_client(url)

        summary = anyio.run(final)
        assert summary["transcript"] and summary["transcript"][0]["text"].startswith("alpha")
