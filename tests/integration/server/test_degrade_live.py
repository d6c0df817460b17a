"""The degrade ladder over the wire: an overloaded model steps the level up, then back."""

from __future__ import annotations

import anyio

from echopanel.server import DegradeConfig, serve_in_background
from echopanel.testing.asr import FakeAsrBackend


async def test_overload_raises_level_visible_in_status_metrics_and_prometheus(connect, h):
    asr = FakeAsrBackend(inference_ratio=1.5)  # 1.5 s of inference per second of audio
    degrade = DegradeConfig(up_hold=0.3, down_hold=0.5, window=2.0)
    config = h.fast_config(degrade=degrade, metrics_interval=0.1)
    async with serve_in_background(config, asr=asr) as url:
        client = await connect(url)
        await client.recv()
        await client.start(sources=["system"])
        await client.expect("status", state="streaming")

        async def pace() -> None:
            for _ in range(200):
                await client.audio(0.05)
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pace)
            status = await client.expect("status", state="overloaded", limit=10)
            assert status["degrade_level"] >= 1 and "degrade level" in status["message"]
            assert await h.metric(url, "echopanel_degrade_level") >= 1
            with anyio.fail_after(5):  # the window restarts at each level change
                while await h.metric(url, "echopanel_asr_realtime_factor") <= 0.8:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            metrics = await client.expect("metrics")
            assert metrics["degrade_level"] >= 1 and metrics["realtime_factor"] > 0
            stream = asr.streams[-1]
            assert stream.tuning.decode_interval == degrade.slow_interval

            asr.inference_ratio = 0.0  # load passes: the ladder steps back to 0
            recovered = await client.expect("status", state="warning", degrade_level=0, limit=15)
            assert "normal" in recovered["message"]
            assert stream.tuning.decode_interval == degrade.base_interval
            tg.cancel_scope.cancel()
        await client.send({"type": "stop", "session_id": "s1"})
        await client.expect("final_summary", limit=10)
        await h.wait_idle(url)
