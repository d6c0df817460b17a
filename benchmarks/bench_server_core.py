"""Cost of the pure server core per input: how much one connection's rules cost the loop.

``python benchmarks/bench_server_core.py [--frames N]`` feeds a streaming
``ServerSession`` N binary audio frames of 40 ms (and one ASR output with a final per ten
frames, as a busy session gets) and prints the mean time per ``handle`` call.
"""

from __future__ import annotations

import argparse
import time

from echopanel.ports import AsrFinalUpdate
from echopanel.protocol import encode_audio_frame
from echopanel.server.core import (
    AsrOutput,
    AsrReady,
    BinaryReceived,
    CoreConfig,
    Opened,
    ServerSession,
    SlotAcquired,
    StreamOpened,
    TextReceived,
)

START = '{"type":"start","session_id":"s","attempt_id":"a","sources":["system"]}'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=20_000)
    args = parser.parse_args()
    session = ServerSession(CoreConfig(), connection_id="bench")
    for event in (
        Opened(authorized=True),
        TextReceived(text=START),
        AsrReady(name="fake"),
        SlotAcquired(),
        StreamOpened(source="system"),
    ):
        session.handle(event, 0.0)
    frame = BinaryReceived(data=encode_audio_frame("system", b"\x01\x00" * 640))
    calls = 0
    began = time.perf_counter()
    for i in range(args.frames):
        now = i * 0.04  # real time
        session.handle(frame, now)
        calls += 1
        if i % 10 == 9:
            update = AsrFinalUpdate(
                text="some words", t0=now, t1=now + 0.4, confidence=0.9, segment_id=f"s{i}"
            )
            session.handle(AsrOutput(source="system", updates=(update,)), now)
            calls += 1
    elapsed = time.perf_counter() - began
    assert session.phase == "streaming", session.phase
    print(f"{calls} handle calls in {elapsed:.3f} s: {elapsed / calls * 1e6:.1f} us per call")
    per_second = 25 * 1.1  # frames + outputs of one real-time source
    print(f"one real-time source costs {per_second * elapsed / calls * 100:.3f} % of a core")


if __name__ == "__main__":
    main()
