"""The client's reconnect and resume against a real server, through a proxy that cuts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest

from echopanel.client import Session
from echopanel.client.bundle import SessionBundle
from echopanel.client.events import FinalEvent, StateChanged, StatusEvent
from echopanel.server import ServerConfig, serve_in_background
from echopanel.session import SessionConfig
from echopanel.testing import FakeCaptureFactory, FakePermissionGate, tone_frames
from echopanel.testing.asr import FakeAsrBackend
from echopanel.testing.proxy import CuttingProxy

REPO = Path(__file__).resolve().parents[3]
FRAMES = 300  # 6 s of audio in 20 ms frames, paced at real time


def _port(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


async def _run(
    url: str,
    *,
    proxy: CuttingProxy | None = None,
    cuts: int = 0,
    recorder: SessionBundle | None = None,
    switch_to: int | None = None,
):
    """Run one session over ``FRAMES`` frames; cut the proxy after each of the first finals
    (first pointing it at the server on port ``switch_to``, as a restart would)."""
    events: list[object] = []
    final_seen = anyio.Event()

    def on_event(event: object) -> None:
        events.append(event)
        if isinstance(event, FinalEvent):
            final_seen.set()

    config = SessionConfig(url=url, sources=("system",), reconnect_backoff=0.05)
    capture = FakeCaptureFactory(frames=tone_frames(FRAMES), interval=0.02, end=True)
    async with Session(
        config,
        capture_factory=capture,
        permission_gate=FakePermissionGate(),
        on_event=on_event,
        recorder=recorder,
    ) as session:
        await session.start()
        for _ in range(cuts):
            assert proxy is not None
            with anyio.fail_after(10):
                await final_seen.wait()
                while session.state != "listening":  # noqa: ASYNC110 - bounded by fail_after
                    await anyio.sleep(0.01)
            final_seen = anyio.Event()
            if switch_to is not None:
                proxy.upstream = ("127.0.0.1", switch_to)
            await proxy.cut()
        with anyio.fail_after(30):
            await session.wait_closed()
        summary = session.summary
        state = session.state
    return events, summary, state


async def test_a_session_cut_twice_gives_the_transcript_of_an_uncut_one(h):
    config = h.fast_config(resume_window=10.0)
    async with (
        serve_in_background(config, asr=FakeAsrBackend()) as url,
        CuttingProxy(_port(url)) as proxy,
    ):
        plain, plain_summary, plain_state = await _run(url)
        cut, summary, state = await _run(proxy.url, proxy=proxy, cuts=2)
        assert plain_state == state == "idle"
        assert proxy.cuts == 2
        states = [e.state for e in cut if isinstance(e, StateChanged)]
        assert states.count("reconnecting") == 2
        resumed = [e for e in cut if isinstance(e, StatusEvent) and e.message.resumed]
        assert len(resumed) == 2

        def texts(events):
            return [e.message.text for e in events if isinstance(e, FinalEvent)]

        ids = [e.message.segment_id for e in cut if isinstance(e, FinalEvent)]
        assert len(ids) == len(set(ids))  # every final once
        assert texts(cut) == texts(plain) and texts(plain)
        assert summary is not None and plain_summary is not None
        assert [e.text for e in summary.transcript] == [e.text for e in plain_summary.transcript]
        assert summary.sources["system"].audio_seconds == pytest.approx(6.0)
        assert await h.metric(url, "echopanel_resumes_total") == 2


async def test_a_server_that_lost_the_session_continues_it_in_a_new_one(h, tmp_path):
    config = h.fast_config(resume_window=10.0)
    async with (
        serve_in_background(config, asr=FakeAsrBackend()) as first,
        serve_in_background(config, asr=FakeAsrBackend()) as second,
        CuttingProxy(_port(first)) as proxy,
    ):
        bundle = SessionBundle(tmp_path)
        events, summary, state = await _run(
            proxy.url, proxy=proxy, cuts=1, recorder=bundle, switch_to=_port(second)
        )
        assert state == "idle" and summary is not None
        gaps = [
            e for e in events if isinstance(e, StatusEvent) and e.message.reason == "resume_gap"
        ]
        assert len(gaps) == 1
        finals = [e.message for e in events if isinstance(e, FinalEvent)]
        ids = [f.segment_id for f in finals]
        assert len(ids) == len(set(ids))
        first_part = [f for f in finals if "~" not in f.segment_id]
        second_part = [f for f in finals if f.segment_id.endswith("~1")]
        assert first_part and second_part  # both server sessions' finals
        assert max(f.t1 for f in first_part) <= min(f.t0 for f in second_part) + 0.5
        assert await h.metric(second, "echopanel_resumes_failed_total") == 1
        path = bundle.paths[-1]
        transcript = json.loads((path / "transcript.json").read_text())
        kept = [f["segment_id"] for f in transcript["finals"]]
        assert set(ids) <= set(kept)  # one transcript with both parts
        assert len(transcript["gaps"]) == 1
        receipt_events = (path / "events.ndjson").read_text()
        assert "resume_token" not in receipt_events  # the credential is never stored


async def _listen_cut_once(url: str, proxy: CuttingProxy, tmp_path, *, cut_on: str):
    """``echopanel listen`` of the JFK sample through ``proxy``; one cut on the first ``cut_on``
    event. Returns the exit code and the JSON lines."""
    from importlib.resources import files

    sample = files("echopanel.data").joinpath("jfk.flac")
    command = [
        sys.executable, "-m", "echopanel", "listen", "--url", proxy.url,
        "--source", f"file:{sample}", "--json", "--bundle-dir", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    lines: list[dict[str, object]] = []
    with (tmp_path / "stderr.txt").open("wb") as stderr:  # never a full pipe
        async with await anyio.open_process(command, env=env, stderr=stderr) as process:
            assert process.stdout is not None
            buffer = b""
            cut = False
            with anyio.fail_after(60):
                async for chunk in process.stdout:
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    for raw in complete:
                        if raw.strip():
                            lines.append(json.loads(raw))
                            if lines[-1]["event"] == cut_on and not cut:
                                cut = True
                                await proxy.cut()
                code = await process.wait()
    return code, lines


async def test_listen_through_a_cut_shows_reconnecting_and_exits_0(h, tmp_path):
    config = h.fast_config(resume_window=10.0)
    async with (
        serve_in_background(config, asr=FakeAsrBackend()) as url,
        CuttingProxy(_port(url)) as proxy,
    ):
        code, lines = await _listen_cut_once(url, proxy, tmp_path, cut_on="final")
        assert code == 0
        states = [e["state"] for e in lines if e["event"] == "state"]
        assert "reconnecting" in states
        assert states[states.index("reconnecting") + 1] == "listening"
        assert any(e["event"] == "summary" for e in lines)


@pytest.mark.slow
async def test_whisper_transcribes_the_phrase_across_a_cut(tmp_path):
    config = ServerConfig(
        asr="whisper", start_timeout=30, slot_timeout=30, flush_timeout=30, resume_window=30
    )
    async with (
        serve_in_background(config, ready_timeout=180) as url,
        CuttingProxy(_port(url)) as proxy,
    ):
        code, lines = await _listen_cut_once(url, proxy, tmp_path, cut_on="partial")
        assert code == 0
        states = [e["state"] for e in lines if e["event"] == "state"]
        assert "reconnecting" in states
        finals = " ".join(str(e["text"]) for e in lines if e["event"] == "final").lower()
        assert "country" in finals, finals


async def test_a_cut_after_stop_still_delivers_the_summary(h):
    config = h.fast_config(resume_window=10.0, flush_timeout=5.0)
    async with (
        serve_in_background(config, asr=FakeAsrBackend(flush_delay=1.0)) as url,
        CuttingProxy(_port(url)) as proxy,
    ):
        events: list[object] = []
        finalizing = anyio.Event()

        def on_event(event: object) -> None:
            events.append(event)
            if isinstance(event, StateChanged) and event.state == "finalizing":
                finalizing.set()

        session_config = SessionConfig(url=proxy.url, sources=("system",))
        capture = FakeCaptureFactory(frames=tone_frames(100), interval=0.01, end=True)
        async with Session(
            session_config,
            capture_factory=capture,
            permission_gate=FakePermissionGate(),
            on_event=on_event,
        ) as session:
            await session.start()
            with anyio.fail_after(20):
                await finalizing.wait()
                await anyio.sleep(0.2)  # the stop is on its way; the flush takes 1 s
                await proxy.cut()
                await session.wait_closed()
            assert session.state == "idle"
            summary = session.summary
        states = [e.state for e in events if isinstance(e, StateChanged)]
        assert "reconnecting" in states
        assert states[states.index("reconnecting") + 1] == "finalizing"
        assert summary is not None and summary.sources["system"].audio_seconds == pytest.approx(2.0)
