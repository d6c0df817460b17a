"""The decode engine with the real tiny.en model: batched decodes equal faster-whisper's.

Several decodes are submitted at once from threads, so the engine runs them as batches; each
result is compared with ``WhisperModel.transcribe`` run alone with the same options and the
same encoder window. Natural speech from ``../shared/data/speech`` is used when present.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import pytest

from echopanel.asr.whisper import default_model_path

executor = pytest.importorskip("echopanel.asr.engine.executor")

pytestmark = pytest.mark.slow

DATA = Path(__file__).parents[3] / "echopanel" / "data"
FIXTURES = Path(__file__).parents[2] / "fixtures" / "audio"
SPEECH = Path("/work/shared/data/speech")

OPTIONS: dict[str, Any] = dict(
    language="en",
    beam_size=1,
    best_of=1,
    temperature=0.0,
    condition_on_previous_text=False,
    word_timestamps=True,
    vad_filter=False,
    compression_ratio_threshold=None,
    log_prob_threshold=None,
    no_speech_threshold=None,
)


def load(path: Path) -> npt.NDArray[np.float32]:
    from faster_whisper import decode_audio

    return np.asarray(decode_audio(str(path), sampling_rate=16000), dtype=np.float32)


@pytest.fixture(scope="module")
def model() -> Any:
    return executor.engine_model_class()(
        str(default_model_path()),
        device="cpu",
        compute_type="int8",
        cpu_threads=2,
        local_files_only=True,
    )


@pytest.fixture
def engine(model: Any) -> Iterator[Any]:
    eng = executor.DecodeEngine(model)
    yield eng
    eng.close()


def reference(model: Any, audio: npt.NDArray[np.float32], frames: int, **options: Any) -> list[Any]:
    model.encode_frames = frames
    try:
        segments, _ = model.transcribe(audio, **options)
        return list(segments)
    finally:
        model.encode_frames = None


def concurrently(
    engine: Any, jobs: list[tuple[npt.NDArray[np.float32], int, dict[str, Any]]]
) -> list[Any]:
    out: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []
    gate = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        audio, frames, options = jobs[i]
        gate.wait(timeout=30)
        try:
            out[i] = engine.transcribe(
                audio, stream=f"s{i}", final=False, frames=frames, options=options
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    return out


def words(segments: list[Any]) -> list[Any]:
    return [w for s in segments for w in s.words]


def assert_same(got: list[Any], want: list[Any]) -> None:
    """Same text and segmentation; times and scores equal up to batched-GEMM rounding."""
    assert [s.text for s in got] == [s.text for s in want]
    for a, b in zip(words(got), words(want), strict=True):
        assert a.word == b.word
        assert a.start == pytest.approx(b.start, abs=0.021)
        assert a.end == pytest.approx(b.end, abs=0.021)
        assert a.probability == pytest.approx(b.probability, abs=0.03)
    for a, b in zip(got, want, strict=True):
        assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=0.02)
        assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=0.02)


def clips() -> list[npt.NDArray[np.float32]]:
    jfk = load(DATA / "jfk.flac")
    out = [jfk[: 16000 * n] for n in (3, 6, 9)] + [jfk]
    out += [load(FIXTURES / f"{name}.flac") for name in ("meeting", "weather")]
    if SPEECH.is_dir():
        out += [load(SPEECH / "1988-24833-0001.flac"), load(SPEECH / "1272-141231-0002.flac")]
    return out


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"beam_size": 5},
        {"initial_prompt": "And so my fellow Americans,"},
    ],
    ids=["greedy", "beam5", "prompt"],
)
def test_batched_decodes_equal_transcribe_alone(
    model: Any, engine: Any, extra: dict[str, Any]
) -> None:
    audios = clips()
    frames = 1800  # one window for all: the round's padded window
    options = {**OPTIONS, **extra}
    expected = [reference(model, a, frames, **options) for a in audios]
    results = concurrently(engine, [(a, frames, options) for a in audios])
    for want, (got, seconds) in zip(expected, results, strict=True):
        assert_same(got, want)
        assert seconds > 0
    snap = engine.snapshot()
    assert snap["decodes_total"] == len(audios)
    assert snap["batch_size"].total > snap["batch_size"].count  # some batch held > 1 decode


def test_prompts_of_different_lengths_in_one_round(model: Any, engine: Any) -> None:
    """Streams prompt with their own recent text; lengths differ (CTranslate2 batches only
    prompts whose start-of-transcript token sits at the same position)."""
    audios = clips()[:4]
    prompts = [None, "And so", "And so my fellow Americans,", "Ask not what your country can do"]
    jobs = [
        (a, 1300, {**OPTIONS, "initial_prompt": p}) for a, p in zip(audios, prompts, strict=True)
    ]
    jobs += [(a, 1300, {**OPTIONS, "initial_prompt": "And so"}) for a in audios[:2]]
    expected = [reference(model, a, f, **o) for a, f, o in jobs]
    results = concurrently(engine, jobs)
    for want, (got, _) in zip(expected, results, strict=True):
        assert_same(got, want)


def test_prompt_bucket_keeps_the_newest_tokens() -> None:
    assert executor.prompt_bucket(list(range(10))) == list(range(10))
    assert executor.prompt_bucket(list(range(40))) == list(range(8, 40))
    assert executor.prompt_bucket(list(range(100))) == list(range(52, 100))


def test_per_request_token_limits_in_one_batch(model: Any, engine: Any) -> None:
    """Requests with different ``max_new_tokens`` share a generate call, results stay exact."""
    audios = clips()[:4]
    frames = 1300
    jobs = []
    for i, a in enumerate(audios):
        jobs.append((a, frames, {**OPTIONS, "max_new_tokens": 4 + 6 * i}))
    expected = [reference(model, a, f, **o) for a, f, o in jobs]
    results = concurrently(engine, jobs)
    for want, (got, _) in zip(expected, results, strict=True):
        assert_same(got, want)
    sizes = engine.snapshot()["batch_size"]
    assert sizes.total > sizes.count  # the limits really met in one batch


def test_windows_of_different_lengths_are_padded_to_the_round(model: Any, engine: Any) -> None:
    """Members asking for different encoder windows run in one round on the longest."""
    jfk = load(DATA / "jfk.flac")
    jobs = [(jfk[: 16000 * 4], 1000, OPTIONS), (jfk, 1300, OPTIONS)]
    results = concurrently(engine, jobs)
    texts = ["".join(s.text for s in got) for got, _ in results]
    assert "fellow Americans" in texts[0] and "country" in texts[1]


def test_a_short_tail_after_the_first_window_is_not_decoded(model: Any, engine: Any) -> None:
    """faster-whisper decodes what is left after the first window's last word as one more
    window; with ``min_tail`` that happens only for at least that much audio. Buffers that
    end in a short silence (like a final's) leave such a tail on some cuts: there the engine
    returns the first window's segments and skips the rest."""
    jfk = load(DATA / "jfk.flac")
    options = {**OPTIONS, "beam_size": 5}
    found = 0
    for cut in (4.5, 6.0, 7.0, 8.0):
        for silence in (0.25, 0.5):
            audio = np.concatenate([jfk[: int(cut * 16000)], np.zeros(int(silence * 16000))])
            audio = audio.astype(np.float32)
            model.windows = 0
            want = reference(model, audio, 1000, **options)
            if model.windows < 2:
                continue  # one window: nothing to skip
            found += 1
            skipped_before = engine.stats.tails_skipped
            got, _ = engine.transcribe(
                audio, stream="s", final=True, frames=1000, options=options, min_tail=1.0
            )
            assert engine.stats.tails_skipped == skipped_before + 1
            assert_same(got, want[: len(got)])  # the first window's segments, unchanged
            every, _ = engine.transcribe(
                audio, stream="s", final=True, frames=1000, options=options
            )
            assert_same(every, want)  # min_tail 0: every window, as faster-whisper does
            assert engine.stats.tails_skipped == skipped_before + 1
    if not found:
        pytest.skip("no cut left a tail window on this CPU")


def test_a_long_tail_is_still_decoded(model: Any, engine: Any) -> None:
    """Speech the first window did not get to is more than ``min_tail``: decoded. (A 10 s
    encoder window over 22 s of speech leaves 12 s for the next window.)"""
    jfk = load(DATA / "jfk.flac")
    audio = np.concatenate([jfk, jfk])
    model.windows = 0
    want = reference(model, audio, 1000, **OPTIONS)
    assert model.windows >= 2
    skipped_before = engine.stats.tails_skipped
    got, _ = engine.transcribe(
        audio, stream="s", final=True, frames=1000, options=OPTIONS, min_tail=1.0
    )
    assert_same(got, want)
    assert "country" in "".join(s.text for s in got).split("fellow")[-1]
    assert engine.stats.tails_skipped == skipped_before


def test_content_frames_counts_up_to_the_zero_padding() -> None:
    features = np.zeros((80, 3000), dtype=np.float32)
    assert executor._content_frames(features) == 0
    features[:, :137] = -0.5
    features[3, 136] = 0.0  # a zero inside a real column is not padding
    assert executor._content_frames(features) == 137
    assert executor._content_frames(features[None]) == 137


def test_a_failing_decode_fails_alone_and_the_engine_goes_on(engine: Any) -> None:
    jfk = load(DATA / "jfk.flac")
    with pytest.raises(Exception):  # noqa: B017 - faster-whisper's own validation error
        engine.transcribe(jfk, stream="bad", final=True, frames=1300,
                          options={**OPTIONS, "max_new_tokens": 10_000})  # fmt: skip
    got, _ = engine.transcribe(jfk, stream="ok", final=True, frames=1300, options=OPTIONS)
    assert "country" in "".join(s.text for s in got)
    assert engine.snapshot()["finals_total"] == 2


def test_open_finals_counts_final_decodes_until_they_return(engine: Any) -> None:
    # What a stream reads to decide a final's encoder window (WhisperDecoder): the full
    # 30 s only for a final the engine has no other final to decode with.
    jfk = load(DATA / "jfk.flac")
    seen: list[int] = []
    started = threading.Event()

    def final() -> None:
        started.set()
        engine.transcribe(jfk, stream="a", final=True, frames=3000, options=OPTIONS)

    assert engine.open_finals() == 0
    engine.transcribe(jfk, stream="p", final=False, frames=1300, options=OPTIONS)
    assert engine.open_finals() == 0  # partials do not count
    thread = threading.Thread(target=final)
    thread.start()
    started.wait(timeout=30)
    while thread.is_alive():
        seen.append(engine.open_finals())
        time.sleep(0.005)
    thread.join()
    assert 1 in seen and max(seen) == 1
    assert engine.open_finals() == 0
    with pytest.raises(Exception):  # noqa: B017 - a failing final is not open any more
        engine.transcribe(jfk, stream="bad", final=True, frames=1300,
                          options={**OPTIONS, "max_new_tokens": 10_000})  # fmt: skip
    assert engine.open_finals() == 0


def test_closing_the_engine_fails_waiting_decodes(model: Any) -> None:
    eng = executor.DecodeEngine(model)
    eng.close()
    with pytest.raises(executor.EngineClosed):
        eng.transcribe(np.zeros(16000, np.float32), stream="s", final=False, frames=1000,
                       options=OPTIONS)  # fmt: skip


async def test_backend_streams_mark_finals_and_attribute_time() -> None:
    """Through WhisperBackend: endpoint decodes reach the engine as finals; RTF is attributed."""
    from echopanel.asr.whisper import WhisperBackend

    backend = WhisperBackend(max_batch=4)
    await backend.load()
    try:
        engine = backend.engine
        assert engine is not None and engine.config.max_batch == 4
        before = engine.snapshot()
        streams = [backend.open_stream("system"), backend.open_stream("mic")]
        # "system" decodes beside the stream (its final in a thread of its own, marked final
        # all the same); "mic" inline, so that its partial decodes all run.
        streams[1].background = False
        pcm = (load(FIXTURES / "weather.flac") * 32767).astype("<i2").tobytes()
        pcm += bytes(32000)  # 1 s of silence: an endpoint

        async def run(i: int) -> None:
            for k in range(0, len(pcm), 3200):
                await streams[i].feed(pcm[k : k + 3200])
            await streams[i].flush()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 0)
            tg.start_soon(run, 1)
        after = engine.snapshot()
        assert after["finals_total"] - before["finals_total"] >= 2
        assert after["decodes_total"] - before["decodes_total"] > 4
        for s in streams:
            assert 0 < s.inference_seconds < 60
            await s.aclose()
    finally:
        await backend.aclose()


async def test_a_busy_engine_stretches_the_partial_cadence() -> None:
    from echopanel.asr.whisper import WhisperBackend
    from echopanel.ports import AsrTuning

    backend = WhisperBackend()
    await backend.load()
    try:
        engine = backend.engine
        assert engine is not None
        stream = backend.open_stream("mic")
        stream.background = False  # the first partial comes with the feed that asked for it
        stream.tune(AsrTuning(decode_interval=0.5))
        speech = (load(DATA / "jfk.flac")[:32000] * 32767).astype("<i2").tobytes()
        updates = await stream.feed(speech)  # 2 s of speech: a first partial
        assert any(u.kind == "partial" for u in updates)
        assert stream.policy.config.decode_interval == 0.5  # idle engine
        engine.stats.busy.add(engine.now(), 3.0)  # 3 s of model calls in the last 3 s
        await stream.feed(bytes(3200))
        assert stream.policy.config.decode_interval == pytest.approx(1.5)
        stream.tune(AsrTuning(decode_interval=1.0))  # the ladder's level 1 on top
        await stream.feed(bytes(3200))
        assert stream.policy.config.decode_interval == pytest.approx(3.0)
        fresh = backend.open_stream("system")  # no partial shown yet: first partial on time
        await fresh.feed(bytes(3200))
        assert fresh.policy.config.decode_interval == 0.5
        await stream.aclose()
        await fresh.aclose()
    finally:
        await backend.aclose()


async def test_a_cancelled_stream_drops_its_decodes() -> None:
    """A session that goes away (flush timeout, disconnect) leaves no decode behind."""
    from echopanel.asr.whisper import WhisperBackend
    from echopanel.errors import AsrError

    backend = WhisperBackend()
    await backend.load()
    try:
        engine = backend.engine
        assert engine is not None
        streams = [backend.open_stream("system") for _ in range(4)]
        pcm = (load(DATA / "jfk.flac") * 32767).astype("<i2").tobytes()
        with anyio.move_on_after(0.05):
            async with anyio.create_task_group() as tg:
                for s in streams:
                    tg.start_soon(s.feed, pcm)
        for s in streams:
            with pytest.raises(AsrError, match="closed"):
                await s.feed(pcm[:3200])
        for _ in range(300):  # the abandoned threads end; nothing stays queued
            if engine.snapshot()["waiting"] == 0:
                break
            await anyio.sleep(0.1)
        assert engine.snapshot()["waiting"] == 0
    finally:
        await backend.aclose()


def test_cancel_stream_fails_only_that_streams_waiting_decode(model: Any) -> None:
    eng = executor.DecodeEngine(model)
    try:
        jfk = load(DATA / "jfk.flac")
        errors: dict[str, BaseException] = {}
        done: dict[str, Any] = {}

        def run(name: str) -> None:
            try:
                done[name] = eng.transcribe(
                    jfk, stream=name, final=False, frames=1300, options=OPTIONS
                )
            except BaseException as exc:
                errors[name] = exc

        threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b", "c")]
        for t in threads:
            t.start()
        dropped = 0
        for _ in range(200):  # cancel "c" while it waits behind the first round
            dropped = eng.cancel_stream("c")
            if dropped or "c" in done:
                break
            threading.Event().wait(0.005)
        for t in threads:
            t.join(timeout=120)
        assert "a" in done and "b" in done
        if dropped:
            assert isinstance(errors["c"], executor.DecodeCancelled)
        else:
            assert "c" in done  # it was already admitted: it completes
    finally:
        eng.close()


def test_cancel_stream_can_drop_only_its_final_or_only_its_partials(model: Any) -> None:
    """An early final overtaken by speech is dropped alone: the stream's partial stays."""
    eng = executor.DecodeEngine(model)
    held = threading.Event()
    next_batch = eng.scheduler.next_batch
    eng.scheduler.next_batch = lambda now, **kw: None if held.is_set() else next_batch(now, **kw)  # type: ignore[method-assign]
    held.set()  # nothing is admitted: both requests stay waiting
    try:
        jfk = load(DATA / "jfk.flac")
        results: dict[bool, Any] = {}

        def run(final: bool) -> None:
            try:
                results[final] = eng.transcribe(
                    jfk, stream="c", final=final, frames=1300, options=OPTIONS
                )
            except BaseException as exc:
                results[final] = exc

        threads = [threading.Thread(target=run, args=(f,)) for f in (False, True)]
        for t in threads:
            t.start()
        for _ in range(500):
            if len(eng.scheduler) == 2:
                break
            threading.Event().wait(0.01)
        assert len(eng.scheduler) == 2
        assert eng.cancel_stream("c", final=True) == 1
        threads[1].join(timeout=10)
        assert isinstance(results[True], executor.DecodeCancelled)
        assert len(eng.scheduler) == 1 and False not in results  # the partial still waits
        held.clear()
        threads[0].join(timeout=120)
        segments, _ = results[False]
        assert "country" in " ".join(s.text for s in segments)
        assert eng.cancel_stream("c", final=False) == 0  # nothing waits any more
    finally:
        eng.close()


def test_a_final_arriving_mid_round_runs_between_its_steps(model: Any, engine: Any) -> None:
    """Finals do not wait for a whole round of partials; both stay exact."""
    audios = clips()[:4]
    frames = 1300
    beam5 = {**OPTIONS, "beam_size": 5}  # slow partials: a long round
    expected_partials = [reference(model, a, frames, **beam5) for a in audios]
    expected_final = reference(model, audios[3], frames, **OPTIONS)
    results: dict[str, Any] = {}
    order: list[str] = []

    def run(name: str, audio: Any, options: dict[str, Any], final: bool) -> None:
        results[name] = engine.transcribe(
            audio, stream=name, final=final, frames=frames, options=options
        )
        order.append(name)

    partials = [
        threading.Thread(target=run, args=(f"p{i}", a, beam5, False)) for i, a in enumerate(audios)
    ]
    for t in partials:
        t.start()
    for _ in range(500):  # until the round of partials has started
        if engine.snapshot()["batches_total"] >= 1:
            break
        threading.Event().wait(0.01)
    final = threading.Thread(target=run, args=("final", audios[3], OPTIONS, True))
    final.start()
    for t in [*partials, final]:
        t.join(timeout=300)
    for i, want in enumerate(expected_partials):
        assert_same(results[f"p{i}"][0], want)
    assert_same(results["final"][0], expected_final)
    snap = engine.snapshot()
    if snap["preemptions"]:
        assert order.index("final") < len(order) - 1  # it overtook the round
    assert snap["finals_total"] == 1


def test_a_final_coming_due_during_a_round_of_finals_joins_it(model: Any, engine: Any) -> None:
    """A second final submitted while the first one's round is still encoding shares its
    decoder call (one round, two members); both results stay exact."""
    jfk = load(DATA / "jfk.flac")
    long_audio = np.concatenate([jfk, jfk, jfk[: 16000 * 7]])  # a 30 s window: a slow encode
    beam5 = {**OPTIONS, "beam_size": 5}
    expected = {
        "a": reference(model, long_audio, 3000, **beam5),
        "b": reference(model, jfk, 3000, **beam5),
    }
    results: dict[str, Any] = {}

    def run(name: str, audio: Any) -> None:
        results[name] = engine.transcribe(
            audio, stream=name, final=True, frames=3000, options=beam5
        )

    first = threading.Thread(target=run, args=("a", long_audio))
    first.start()
    for _ in range(500):  # until the first final's round has started
        if engine.snapshot()["batches_total"] >= 1:
            break
        threading.Event().wait(0.005)
    second = threading.Thread(target=run, args=("b", jfk))
    second.start()
    for t in (first, second):
        t.join(timeout=300)
    for name, want in expected.items():
        assert_same(results[name][0], want)
    snap = engine.snapshot()
    assert engine.stats.joined == 1
    assert snap["batches_total"] == 1 and snap["batch_size"].total == 2
