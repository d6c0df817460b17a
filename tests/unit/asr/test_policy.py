"""Streaming policy against a scripted decoder and an energy VAD.

Audio here is synthetic: a "word" is a run of constant amplitude ``0.1 + 0.01 * (i + 1)``
for vocabulary index ``i``; silence is zeros. The fake decoder reads the runs back as words
with exact timestamps. A word whose run touches the end of the decoded audio is "unstable":
its text changes with every decode, as Whisper's last word often does, so LocalAgreement must
never commit it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import attrs
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echopanel.asr.policy import (
    SAMPLE_RATE,
    DecodedSegment,
    PolicyConfig,
    StreamingPolicy,
    Word,
    break_repetitions,
    is_anomalous,
    normalize_word,
)
from echopanel.ports import AsrFinalUpdate, AsrPartialUpdate, AsrTuning, AsrUpdate

VOCAB = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
WORD_S = 0.4
GAP_S = 0.1
FRAME = 160


def word_audio(word: str) -> npt.NDArray[np.float32]:
    amp = 0.1 + 0.01 * (VOCAB.index(word) + 1)
    return np.full(int(WORD_S * SAMPLE_RATE), amp, dtype=np.float32)


def silence(seconds: float) -> npt.NDArray[np.float32]:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def utterance(words: Sequence[str]) -> npt.NDArray[np.float32]:
    parts: list[npt.NDArray[np.float32]] = []
    for w in words:
        parts += [word_audio(w), silence(GAP_S)]
    return np.concatenate(parts)


class EnergyVad:
    """Speech when the frame's mean magnitude is above 0.05."""

    frame_samples = FRAME

    def speech_probs(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        assert len(audio) % FRAME == 0
        frames = np.abs(audio.reshape(-1, FRAME)).mean(axis=1)
        probs: npt.NDArray[np.float32] = (frames > 0.05).astype(np.float32)
        return probs


@attrs.define
class ScriptedDecoder:
    """Reads the synthetic words back; scripted failure modes on request."""

    quality: dict[str, float] = attrs.Factory(dict)
    extra: list[Word] = attrs.Factory(list)  # words appended to every hypothesis
    replace: str | None = None  # whole hypothesis text, one word over all runs
    # A hallucinated segment after the speech (Whisper at a pause): its first word has
    # near-zero probability, the rest are stacked on the audio's last instant.
    tail: tuple[str, ...] = ()
    # Beam decodes stop after this many words, the last one stretched to the audio's end
    # (tiny.en ending a hypothesis early over continuing speech).
    truncate_beam: int | None = None
    # Beam decodes stop after this many words, timed as heard (no stretched last word).
    cut_beam: int | None = None
    # A separate segment appended to every hypothesis (times relative to the audio).
    ghost: tuple[Word, ...] = ()
    # Greedy decodes (beam 1) misread these words, the same way every time.
    greedy_as: dict[str, str] = attrs.Factory(dict)
    # The first beam decode with more than ``skip_beam[1]`` words jumps over words
    # ``skip_beam[0]:skip_beam[1]``, as tiny.en jumps over seconds of speech in a segment.
    skip_beam: tuple[int, int] | None = None
    # Beam decodes end a sentence after these words ("foxtrot.").
    sentence_after: frozenset[str] = frozenset()
    calls: list[tuple[float, str, int]] = attrs.Factory(list)
    prefixes: list[str] = attrs.Factory(list)

    def decode(
        self, audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        self.calls.append((len(audio) / SAMPLE_RATE, prompt, beam_size))
        self.prefixes.append(prefix)
        words: list[Word] = []
        loud = np.abs(audio) > 0.05
        i = 0
        while i < len(audio):
            if not loud[i]:
                i += 1
                continue
            j = i
            while j < len(audio) and audio[j] == audio[i]:
                j += 1
            idx = round((float(audio[i]) - 0.1) / 0.01) - 1
            text = VOCAB[idx] if 0 <= idx < len(VOCAB) else "noise"
            if j == len(audio):
                text = f"{text}{len(self.calls)}"  # unstable: differs every decode
            elif beam_size == 1:
                text = self.greedy_as.get(text, text)
            elif text in self.sentence_after:
                text += "."
            words.append(
                Word(text=f" {text}", start=i / SAMPLE_RATE, end=j / SAMPLE_RATE, probability=0.9)
            )
            i = j
        # Like Whisper forced to a prefix: the prefix's words are not returned.
        want = [normalize_word(t) for t in prefix.split()]
        while want and words and normalize_word(words[0].text) == want[0]:
            words.pop(0)
            want.pop(0)
        if self.replace is not None and words:
            words = [
                Word(
                    text=f" {self.replace}",
                    start=words[0].start,
                    end=words[-1].end,
                    probability=0.3,
                )
            ]
        if self.skip_beam is not None and beam_size > 1 and len(words) > self.skip_beam[1]:
            a, b = self.skip_beam
            words = words[:a] + words[b:]
            self.skip_beam = None
        if self.cut_beam is not None and beam_size > 1:
            words = words[: self.cut_beam]
        if self.truncate_beam is not None and beam_size > 1 and len(words) > self.truncate_beam:
            words = words[: self.truncate_beam]
            words[-1] = attrs.evolve(words[-1], end=len(audio) / SAMPLE_RATE)
        words += self.extra
        segments = [DecodedSegment(words=tuple(words), **self.quality)]
        end = len(audio) / SAMPLE_RATE
        ghost = tuple(w for w in self.ghost if w.end <= end)
        if ghost:
            segments.append(DecodedSegment(words=ghost))
        if self.tail and words and words[-1].end < end - 0.2:
            ghost = [Word(text=f" {self.tail[0]}", start=words[-1].end, end=end, probability=0.01)]
            ghost += [
                Word(text=f" {t}", start=end, end=end, probability=0.9) for t in self.tail[1:]
            ]
            segments.append(
                DecodedSegment(words=tuple(ghost), no_speech_prob=0.57, avg_logprob=-0.67)
            )
        return segments


def run(
    policy: StreamingPolicy, audio: npt.NDArray[np.float32], chunk: int = 1600
) -> list[AsrUpdate]:
    out: list[AsrUpdate] = []
    for i in range(0, len(audio), chunk):
        out += policy.feed(audio[i : i + chunk])
    return out


def finals(updates: Sequence[AsrUpdate]) -> list[AsrFinalUpdate]:
    return [u for u in updates if isinstance(u, AsrFinalUpdate)]


def partials(updates: Sequence[AsrUpdate]) -> list[AsrPartialUpdate]:
    return [u for u in updates if isinstance(u, AsrPartialUpdate)]


def make(decoder: ScriptedDecoder | None = None, **config: object) -> StreamingPolicy:
    # The synthetic utterances here are mostly 1-3 words, which the default config treats as
    # fragments whose endpoint waits longer (``short_words``; tested in
    # test_policy_fragments.py): off unless a test asks for it.
    config.setdefault("short_words", 0)
    return StreamingPolicy(decoder or ScriptedDecoder(), EnergyVad(), PolicyConfig(**config))  # type: ignore[arg-type]


def test_silence_never_reaches_the_decoder_and_the_buffer_stays_small() -> None:
    decoder = ScriptedDecoder()
    policy = make(decoder)
    assert run(policy, silence(30)) == []
    assert policy.flush() == []
    assert decoder.calls == []
    assert policy.stream_seconds == pytest.approx(30.0)
    assert policy.buffer_seconds == 0.0


def test_buffer_is_trimmed_during_silence() -> None:
    policy = make()
    run(policy, silence(20))
    assert policy.buffer_seconds <= 1.0


def test_one_utterance_gives_partials_then_one_final() -> None:
    words = ["alpha", "bravo", "charlie", "delta"]
    updates = run(make(), np.concatenate([silence(1), utterance(words), silence(1.5)]))
    fin = finals(updates)
    assert [f.text for f in fin] == ["alpha bravo charlie delta"]
    first_final = updates.index(fin[0])
    assert partials(updates[:first_final]), "partials must precede the final"
    assert not partials(updates[first_final:])
    assert fin[0].t0 == pytest.approx(1.0)
    assert fin[0].t1 == pytest.approx(1.0 + 4 * (WORD_S + GAP_S) - GAP_S)
    assert fin[0].confidence == pytest.approx(0.9)


def test_partials_replace_each_other_and_only_grow_by_committed_words() -> None:
    updates = run(make(), utterance(["alpha", "bravo", "charlie", "delta", "echo"]))
    texts = [p.text for p in partials(updates)]
    assert len(texts) == len(set(texts)), "an unchanged partial is not sent again"
    stable = [t.split()[:-1] for t in texts]  # the last word may be unstable
    for before, after in itertools.pairwise(stable):
        assert after[: len(before)] == before
    assert all(t0 <= t1 for t0, t1 in ((p.t0, p.t1) for p in partials(updates)))


def test_local_agreement_commits_only_words_two_hypotheses_agree_on() -> None:
    # Speech that never pauses: only the buffer limit makes finals, and those hold
    # committed words only -- never an unstable one (which carries a digit).
    words = [VOCAB[i % len(VOCAB)] for i in range(50)]  # 25 s of speech
    policy = make(max_buffer=6.0)
    updates = run(policy, utterance(words))
    fin = finals(updates)
    assert len(fin) >= 3
    assert not any(ch.isdigit() for f in fin for ch in f.text)
    updates += policy.flush()
    spoken = " ".join(f.text for f in finals(updates)).split()
    assert spoken == words


def test_the_buffer_limit_final_is_a_beam_decode_cut_at_a_sentence_end() -> None:
    # Greedy partials misread "charlie" as "bravo" every time, so LocalAgreement commits
    # "bravo bravo"; the limit's final comes from a final-quality decode of the buffer
    # (beam), which reads it right, and ends at the last sentence end it confirmed.
    words = [VOCAB[i % 9] for i in range(40)]  # 20 s of speech that never pauses
    decoder = ScriptedDecoder(greedy_as={"charlie": "bravo"}, sentence_after=frozenset({"foxtrot"}))
    policy = make(decoder, max_buffer=6.0)
    updates = run(policy, utterance(words))
    at_limit = finals(updates)
    assert len(at_limit) >= 2
    assert all(f.text.endswith("foxtrot.") for f in at_limit), [f.text for f in at_limit]
    assert all(" bravo bravo" not in f.text for f in at_limit)
    assert any(p.text.count("bravo bravo") for p in partials(updates)), "greedy misreads"
    updates += policy.flush()
    spoken = normalize_word(" ".join(f.text for f in finals(updates))).split()
    assert spoken == words


def test_the_first_partial_decode_comes_once_the_utterance_has_min_speech() -> None:
    # Not at the cadence's next tick, up to decode_interval later (issue 9's first partial).
    decoder = ScriptedDecoder()
    policy = make(decoder, decode_interval=0.5, min_speech=0.25)
    run(policy, silence(1.0), chunk=160)  # the gate's last tick at 1.0 s
    speech = np.concatenate([utterance(["alpha", "bravo", "charlie", "delta"]), silence(1)])
    fed, first = 0, None
    while fed < len(speech):
        policy.feed(speech[fed : fed + 160])
        fed += 160
        if decoder.calls and first is None:
            first = fed / SAMPLE_RATE
    assert first is not None and first <= 0.25 + 0.02
    greedy = [seconds for seconds, _, beam in decoder.calls if beam == 1]
    assert len(greedy) >= 3
    assert all(b - a == pytest.approx(0.5) for a, b in itertools.pairwise(greedy))  # cadence


def test_buffer_limit_bounds_the_decoded_audio() -> None:
    decoder = ScriptedDecoder()
    policy = make(decoder, max_buffer=5.0)
    run(policy, utterance([VOCAB[i % 9] for i in range(40)]))
    # A decode with a prefix hears the last final's context (at most context_seconds)
    # before the buffer; the buffer itself never exceeds the limit.
    context = policy.config.context_seconds
    for (seconds, _, _), prefix in zip(decoder.calls, decoder.prefixes, strict=True):
        assert seconds <= 5.0 + 0.1 + (context if prefix else 0.0)
    assert any(prefix for prefix in decoder.prefixes), "limit finals decode with context"


def test_endpoints_split_utterances_with_monotonic_times_and_unique_ids() -> None:
    audio = np.concatenate(
        [
            utterance(["alpha", "bravo"]),
            silence(1),
            utterance(["charlie"]),
            silence(1),
            utterance(["delta", "echo"]),
            silence(1),
        ]
    )
    policy = make(id_prefix="mic-")
    fin = finals(run(policy, audio))
    assert [f.text for f in fin] == ["alpha bravo", "charlie", "delta echo"]
    assert all(a.t1 <= b.t0 for a, b in itertools.pairwise(fin))
    assert len({f.segment_id for f in fin}) == 3
    assert all(f.segment_id.startswith("mic-") for f in fin)
    assert policy.buffer_seconds < policy.config.preroll + policy.config.decode_interval


def test_final_arrives_after_endpoint_silence() -> None:
    policy = make(endpoint_silence=0.5)
    run(policy, utterance(["alpha", "bravo"]))
    assert finals(policy.feed(silence(0.3))) == []
    assert [f.text for f in finals(policy.feed(silence(0.3)))] == ["alpha bravo"]


def test_segment_ids_are_stable_for_the_same_audio() -> None:
    audio = np.concatenate([utterance(["golf", "hotel"]), silence(1)])
    a = finals(run(make(), audio))
    b = finals(run(make(), audio, chunk=320))
    assert [f.segment_id for f in a] == [f.segment_id for f in b]


def test_previous_finals_are_the_prompt() -> None:
    decoder = ScriptedDecoder()
    policy = make(decoder)
    run(policy, np.concatenate([utterance(["alpha", "bravo"]), silence(1)]))
    assert all(prompt == "" for _, prompt, _ in decoder.calls)
    decoder.calls.clear()
    run(policy, utterance(["charlie"]))
    assert decoder.calls
    assert all(prompt == "alpha bravo" for _, prompt, _ in decoder.calls)


@pytest.mark.parametrize(
    "quality",
    [
        {"compression_ratio": 3.0},
        {"avg_logprob": -2.0},
        {"no_speech_prob": 0.9, "avg_logprob": -1.1},
    ],
)
def test_bad_segments_are_dropped(quality: dict[str, float]) -> None:
    policy = make(ScriptedDecoder(quality=quality))
    updates = run(policy, np.concatenate([utterance(["alpha", "bravo"]), silence(1)]))
    assert updates + policy.flush() == []


def test_confident_speech_with_some_no_speech_prob_is_kept() -> None:
    policy = make(ScriptedDecoder(quality={"no_speech_prob": 0.9, "avg_logprob": -0.2}))
    fin = finals(run(policy, np.concatenate([utterance(["alpha"]), silence(1)])))
    assert [f.text for f in fin] == ["alpha"]


def test_words_where_the_vad_heard_nothing_are_dropped() -> None:
    ghost = Word(text=" ghost", start=1.15, end=1.3, probability=0.9)
    policy = make(ScriptedDecoder(extra=[ghost]), word_vad_pad=0.1)
    audio = np.concatenate([utterance(["alpha", "bravo"]), silence(4)])
    fin = finals(run(policy, audio))
    assert [f.text for f in fin] == ["alpha bravo"]


@pytest.mark.parametrize(
    "tail", [("Thank",), ("Thank", "you", "for", "watching."), ("And,", "and,", "and,")]
)
def test_a_hallucinated_segment_after_the_speech_is_dropped(tail: tuple[str, ...]) -> None:
    # Cause 1 (issue 8): the final decode of a buffer ending in a pause made tiny.en append
    # "Thank you for watching" as its own segment -- first word p=0.01, the rest stacked
    # at the buffer's end. The word VAD guard let the first word through (it touches the
    # speech) and the rest were inside its padding.
    decoder = ScriptedDecoder(tail=tail)
    policy = make(decoder)
    audio = np.concatenate(
        [utterance(["alpha", "bravo"]), silence(1), utterance(["charlie"]), silence(1)]
    )
    updates = run(policy, audio) + policy.flush()
    assert [f.text for f in finals(updates)] == ["alpha bravo", "charlie"]
    assert not any(tail[0] in p.text for p in partials(updates))
    assert all(tail[0] not in prompt for _, prompt, _ in decoder.calls)


def test_a_truncated_final_decode_is_decoded_again_greedily() -> None:
    # Cause 4 (issue 8): the beam-5 final decode of 13 s of speech stopped after "allowed
    # to", stretching "to" over the next 7 s; the final lost 12 words the partials had.
    decoder = ScriptedDecoder(truncate_beam=3)
    policy = make(decoder)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    fin = finals(run(policy, np.concatenate([utterance(words), silence(1)])))
    assert [f.text for f in fin] == [" ".join(words)]
    assert [beam for _, _, beam in decoder.calls][-2:] == [5, 1]


def test_a_final_decode_with_far_fewer_words_than_the_partials_is_decoded_again() -> None:
    # "... for those who come to" and nothing more: the beam-5 final of 11 s of speech
    # ended early with its last word timed normally; the partials had heard 20 more words.
    decoder = ScriptedDecoder(cut_beam=3)
    policy = make(decoder)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    fin = finals(run(policy, np.concatenate([utterance(words), silence(1)])))
    assert [f.text for f in fin] == [" ".join(words)]
    assert [beam for _, _, beam in decoder.calls][-2:] == [5, 1]


def test_a_final_decode_as_long_as_the_partials_is_not_decoded_again() -> None:
    decoder = ScriptedDecoder()
    policy = make(decoder)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    fin = finals(run(policy, np.concatenate([utterance(words), silence(1)])))
    assert [f.text for f in fin] == [" ".join(words)]
    assert [beam for _, _, beam in decoder.calls][-1] == 5


class SoftVad(EnergyVad):
    """Scores speech 0.4: a hoarse or distant voice Silero is unsure about."""

    def speech_probs(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return super().speech_probs(audio) * np.float32(0.4)


def test_soft_speech_reaches_the_decoder() -> None:
    # Cause 5 (issue 8): a speaker with a cold scored 0.1-0.45 on Silero for 6 s; with a 0.5
    # gate the policy trimmed that speech away undecoded (offline transcribed it).
    policy = StreamingPolicy(ScriptedDecoder(), SoftVad(), PolicyConfig(short_words=0))
    audio = np.concatenate([utterance(["alpha", "bravo", "charlie"]), silence(1)])
    assert [f.text for f in finals(run(policy, audio))] == ["alpha bravo charlie"]


def test_a_stock_phrase_segment_in_a_pause_is_dropped() -> None:
    # "He persisted. Thank you." -- the sign-off came as its own segment of ordinary-looking
    # words over the 0.5 s of silence before the endpoint.
    thanks = (
        Word(text=" Thank", start=1.0, end=1.2, probability=0.5),
        Word(text=" you.", start=1.2, end=1.4, probability=0.9),
    )
    policy = make(ScriptedDecoder(ghost=thanks))
    audio = np.concatenate([utterance(["alpha", "bravo"]), silence(1)])
    assert [f.text for f in finals(run(policy, audio))] == ["alpha bravo"]
    # Spoken, it is kept: test_blocklisted_words_are_kept_when_clearly_spoken.


def test_a_stock_phrase_after_the_speech_in_the_same_segment_is_dropped() -> None:
    # "... but a crayfish. Thank you very much." -- one segment, the sign-off in the pause.
    thanks = [
        Word(text=" Thank", start=1.0, end=1.15, probability=0.4),
        Word(text=" you", start=1.15, end=1.25, probability=0.9),
        Word(text=" very", start=1.25, end=1.35, probability=0.6),
        Word(text=" much.", start=1.35, end=1.45, probability=0.9),
    ]
    policy = make(ScriptedDecoder(extra=thanks))
    audio = np.concatenate([utterance(["alpha", "bravo"]), silence(1)])
    assert [f.text for f in finals(run(policy, audio))] == ["alpha bravo"]


def test_a_squeezed_stock_phrase_at_the_end_of_speech_is_dropped() -> None:
    # "... but a crayfish. Thank you very much." with the sign-off stacked on the end of
    # the speech, where the VAD still heard the tail of "crayfish" (half speech frames).
    decoder = ScriptedDecoder()

    def decode(
        audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> list[DecodedSegment]:
        heard = list(
            decoder.decode(audio, prompt=prompt, beam_size=beam_size, prefix=prefix)[0].words
        )
        if len(heard) < 3:
            return [DecodedSegment(words=tuple(heard))]
        at = heard[2].start  # "charlie" is not transcribed; the sign-off sits on it
        words = [
            *heard[:2],
            Word(text=" Thank", start=at, end=at + 0.05, probability=0.01),
            Word(text=" you", start=at + 0.05, end=at + 0.05, probability=0.99),
            Word(text=" very", start=at + 0.05, end=at + 0.05, probability=0.4),
            Word(text=" much.", start=at + 0.05, end=at + 0.05, probability=0.99),
        ]
        return [DecodedSegment(words=tuple(words))]

    policy = StreamingPolicy(
        type("D", (), {"decode": staticmethod(decode)})(), EnergyVad(), PolicyConfig(short_words=0)
    )
    audio = np.concatenate([utterance(["alpha", "bravo", "charlie"]), silence(1)])
    assert [f.text for f in finals(run(policy, audio))] == ["alpha bravo"]


def test_anomaly_score_spares_ordinary_words() -> None:
    spoken = [
        Word(text=f" w{i}", start=i * 0.3, end=i * 0.3 + 0.25, probability=0.4) for i in range(5)
    ]
    assert not is_anomalous(spoken)
    assert not is_anomalous([Word(text=" Okay.", start=0, end=0.3, probability=0.3)])
    assert is_anomalous([Word(text=" Thank", start=0, end=0.6, probability=0.01)])
    stacked = [Word(text=f" w{i}", start=2.0, end=2.0, probability=0.9) for i in range(3)]
    assert is_anomalous(spoken[:2] + stacked)


def test_blocklisted_hallucination_on_a_blip_is_dropped() -> None:
    policy = make(ScriptedDecoder(replace="Thank you."))
    audio = np.concatenate([silence(1), word_audio("alpha"), silence(2)])
    assert finals(run(policy, audio) + policy.flush()) == []


def test_blocklisted_words_are_kept_when_clearly_spoken() -> None:
    decoder = ScriptedDecoder(replace="Thank you.")
    policy = make(decoder, blocklist_min_confidence=0.2)
    audio = np.concatenate([utterance(["alpha", "bravo", "charlie"]), silence(1)])
    assert [f.text for f in finals(run(policy, audio))] == ["Thank you."]


def test_repetition_loops_are_broken() -> None:
    def ws(text: str) -> list[Word]:
        return [Word(text=f" {t}", start=i, end=i + 0.5) for i, t in enumerate(text.split())]

    def out(text: str) -> str:
        return " ".join(w.text.strip() for w in break_repetitions(ws(text), 2))

    assert out("go go go go go") == "go go"
    assert out("I said I said I said I said stop") == "I said I said stop"
    # Cause 3 (issue 8): a phrase of 3+ words is never repeated back to back in a final.
    assert out("a b c a b c a b c") == "a b c"
    assert out("I am sure I can sleep. I am sure I can sleep.") == "I am sure I can sleep."
    assert out("one two three") == "one two three"
    assert out("no no no") == "no no"
    # A long phrase again after one word ("X. And X.", a context decode live, issue 8).
    loop = "here's a long pause. And I think this is probably good. Thanks."
    assert out(f"{loop} And {loop}") == loop
    assert out("I think so and I think so") == "I think so and I think so"  # short: speech


def test_normalize_word() -> None:
    assert normalize_word(" Thank you.") == "thank you"
    assert normalize_word("Don't!") == "don't"


def test_flush_finalizes_pending_speech_and_the_stream_goes_on() -> None:
    policy = make(id_prefix="s-")
    run(policy, utterance(["alpha", "bravo"]))
    fin = finals(policy.flush())
    assert [f.text for f in fin] == ["alpha bravo"]
    assert policy.flush() == []
    later = finals(run(policy, np.concatenate([utterance(["charlie"]), silence(1)])))
    assert [f.text for f in later] == ["charlie"]
    assert later[0].t0 >= fin[0].t1
    assert later[0].segment_id != fin[0].segment_id


def test_tune_changes_interval_beam_and_partials() -> None:
    decoder = ScriptedDecoder()
    policy = make(decoder)
    policy.tune(AsrTuning(decode_interval=1.0, beam_size=3, emit_partials=False))
    updates = run(policy, np.concatenate([utterance(["alpha", "bravo", "charlie"]), silence(1)]))
    assert partials(updates) == []
    assert [f.text for f in finals(updates)] == ["alpha bravo charlie"]
    beams = [beam for _, _, beam in decoder.calls]
    assert beams[:-1] == [3] * (len(beams) - 1)  # partial decodes use the tuned beam
    assert beams[-1] == 5  # the endpoint decode uses final_beam_size
    assert len(decoder.calls) <= 3  # 1.9 s of speech at 1 s intervals, plus the endpoint


phrase = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=6, unique=True)  # no loops


@settings(max_examples=40, deadline=None)
@given(
    phrases=st.lists(phrase, min_size=1, max_size=4),
    pauses=st.lists(st.floats(0.6, 2.0), min_size=4, max_size=4),
    chunk=st.integers(80, 4000),
)
def test_finals_reproduce_the_words_whatever_the_chunking(
    phrases: list[list[str]], pauses: list[float], chunk: int
) -> None:
    parts = []
    for words, pause in zip(phrases, pauses, strict=False):
        parts += [utterance(words), silence(pause)]
    policy = make()
    updates = run(policy, np.concatenate(parts), chunk=chunk) + policy.flush()
    fin = finals(updates)
    assert [f.text.split() for f in fin] == phrases
    assert all(f.t0 <= f.t1 for f in fin)
    assert all(a.t1 <= b.t0 for a, b in itertools.pairwise(fin))
    assert len({f.segment_id for f in fin}) == len(fin)
    # Every partial precedes the final that covers it.
    pending = False
    for u in updates:
        if isinstance(u, AsrPartialUpdate):
            pending = True
        elif pending:
            pending = False
    assert not pending


def final_audio(chunk: int) -> list[float]:
    """Seconds of audio each final decode of a fixed stream heard, fed ``chunk`` at a time."""
    audio = np.concatenate(
        [
            silence(2.33),
            utterance(["alpha", "bravo", "charlie"]),
            silence(1.71),
            utterance(["delta", "echo"]),
            silence(3.07),
            utterance(["foxtrot", "golf", "hotel"]),
            silence(1.5),
        ]
    )
    decoder = ScriptedDecoder()
    policy = make(decoder)
    run(policy, audio, chunk=chunk)
    policy.flush()
    return [round(seconds, 4) for seconds, _, beam in decoder.calls if beam > 1]


@pytest.mark.parametrize("chunk", [640, 1000, 1600, 4000])
def test_a_final_decodes_the_same_audio_whatever_the_chunking(chunk: int) -> None:
    # The buffer starts ``preroll`` before the utterance's onset however the audio arrived
    # (40 ms frames live, 100 ms in the replay): tiny.en's words depend on that silence.
    one_frame = final_audio(FRAME)
    assert final_audio(chunk) == one_frame
    # The first utterance: the pre-roll, 1.4 s of speech, 0.5 s of endpoint silence.
    assert one_frame[0] == pytest.approx(PolicyConfig().preroll + 1.4 + 0.5)


@pytest.mark.parametrize("context_seconds", [0.0, PolicyConfig().context_seconds])
def test_the_pre_roll_never_reaches_back_into_the_last_utterance(context_seconds: float) -> None:
    # The pre-roll (1 s) is longer than the endpoint's silence (0.5 s): after an endpoint
    # the buffer keeps only that silence, so the next final never decodes the end of the
    # last word ("charlie delta echo") again.
    audio = np.concatenate(
        [utterance(["alpha", "bravo", "charlie"]), silence(0.6), utterance(["delta", "echo"])]
    )
    policy = make(context_seconds=context_seconds)
    assert policy.config.preroll > policy.config.endpoint_silence
    fin = finals(run(policy, np.concatenate([audio, silence(1.0)]), chunk=FRAME))
    assert [f.text for f in fin] == ["alpha bravo charlie", "delta echo"]


def test_greedy_tuning_makes_the_final_decode_greedy_too() -> None:
    decoder = ScriptedDecoder()
    policy = make(decoder)
    policy.tune(AsrTuning(decode_interval=1.0, beam_size=1, final_beam_size=1, emit_partials=False))
    updates = run(policy, np.concatenate([utterance(["alpha", "bravo"]), silence(1)]))
    assert [f.text for f in finals(updates)] == ["alpha bravo"]
    assert {beam for _, _, beam in decoder.calls} == {1}


def test_state_stays_bounded_over_many_utterances() -> None:
    """Nothing in the policy grows with the number of finals (a long session)."""
    policy = make()
    one = np.concatenate([utterance(["alpha", "bravo"]), silence(0.8)])
    count = 0
    for _ in range(120):
        count += len(finals(run(policy, one)))
    assert count == 120
    for name, value in vars(policy).items():
        if isinstance(value, list | set | dict | tuple):
            assert len(value) <= 100, f"{name} holds {len(value)} items after 120 finals"


@attrs.define
class FragmentDecoder(ScriptedDecoder):
    """Mishears "delta" when the audio starts with it (no context before it), as tiny.en
    mishears the first words of a fragment cut at a short pause ("my best qualities" ->
    "Hi best quantities")."""

    def decode(
        self, audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        segments = list(super().decode(audio, prompt=prompt, beam_size=beam_size, prefix=prefix))
        if prefix or not segments or not segments[0].words:
            return segments
        first = segments[0].words[0]
        if normalize_word(first.text) == "delta":
            words = (attrs.evolve(first, text=" teller"), *segments[0].words[1:])
            segments[0] = attrs.evolve(segments[0], words=words)
        return segments


def test_a_final_after_a_short_pause_is_decoded_after_the_previous_final() -> None:
    decoder = FragmentDecoder()
    policy = make(decoder)
    audio = np.concatenate(
        [utterance(["alpha", "bravo", "charlie"]), silence(0.8), utterance(["delta", "echo"])]
    )
    out = finals(run(policy, np.concatenate([audio, silence(1)])))
    assert [f.text for f in out] == ["alpha bravo charlie", "delta echo"]
    # The second final's decode heard the end of the first one, forced to its text, and
    # returned only the new words, timed after the pause.
    assert decoder.prefixes[-1] == "alpha bravo charlie"
    assert decoder.calls[-1][0] > 2.0  # context + the new utterance
    assert out[1].t0 >= out[0].t1 + 0.5
    # The prompt does not repeat the prefix.
    assert "charlie" not in decoder.calls[-1][1]


@attrs.define
class LoopingDecoder(ScriptedDecoder):
    """Forced to a prefix, says its first four words again before the new words (tiny.en
    going back over the context: "And I'm saying a bunch of different words that I did not
    say in the original one." + "And I'm saying a bunch of different words ...")."""

    def decode(
        self, audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        segments = list(super().decode(audio, prompt=prompt, beam_size=beam_size, prefix=prefix))
        if not prefix or not segments or not segments[0].words:
            return segments
        at = segments[0].words[0].start
        again = tuple(
            Word(text=f" {t}", start=at + i * 0.01, end=at + i * 0.01 + 0.01, probability=0.8)
            for i, t in enumerate(prefix.split()[:4])
        )
        segments[0] = attrs.evolve(segments[0], words=again + segments[0].words)
        return segments


def test_a_context_decode_that_says_the_context_again_is_decoded_alone() -> None:
    decoder = LoopingDecoder()
    policy = make(decoder)
    audio = np.concatenate(
        [
            utterance(["alpha", "bravo", "charlie", "delta", "echo"]),
            silence(0.8),
            utterance(["foxtrot", "golf"]),
            silence(1),
        ]
    )
    out = finals(run(policy, audio))
    assert [f.text for f in out] == ["alpha bravo charlie delta echo", "foxtrot golf"]
    assert decoder.prefixes[-2:] == ["alpha bravo charlie delta echo", ""]


@attrs.define
class EchoDecoder(ScriptedDecoder):
    """Forced to a prefix ending in "delta", says the new words twice with "delta" between
    ("... We're" + "just saying some words. We're just saying some words.")."""

    def decode(
        self, audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        segments = list(super().decode(audio, prompt=prompt, beam_size=beam_size, prefix=prefix))
        if not prefix.endswith("delta") or not segments or not segments[0].words:
            return segments
        new = segments[0].words
        end = new[-1].end
        again = tuple(
            Word(text=f" {t}", start=end + i * 0.2, end=end + i * 0.2 + 0.15, probability=0.8)
            for i, t in enumerate(["delta", *(normalize_word(w.text) for w in new)])
        )
        segments[0] = attrs.evolve(segments[0], words=new + again)
        return segments


def test_a_repeat_that_starts_in_the_context_is_cut() -> None:
    decoder = EchoDecoder()
    policy = make(decoder, word_vad_pad=5.0)
    audio = np.concatenate(
        [
            utterance(["alpha", "bravo", "charlie", "delta"]),
            silence(0.8),
            utterance(["echo", "foxtrot", "golf"]),
            silence(1),
        ]
    )
    out = finals(run(policy, audio))
    assert decoder.prefixes[-1] == "alpha bravo charlie delta"
    assert [f.text for f in out] == ["alpha bravo charlie delta", "echo foxtrot golf"]


def test_no_context_after_a_long_pause_or_at_the_first_utterance() -> None:
    decoder = FragmentDecoder()
    policy = make(decoder, context_gap=1.0)
    audio = np.concatenate(
        [utterance(["alpha", "bravo"]), silence(4), utterance(["delta", "echo"]), silence(1)]
    )
    out = finals(run(policy, audio))
    assert [f.text for f in out] == ["alpha bravo", "teller echo"]
    assert set(decoder.prefixes) == {""}


def test_context_is_off_with_context_seconds_zero() -> None:
    decoder = FragmentDecoder()
    policy = make(decoder, context_seconds=0.0)
    audio = np.concatenate(
        [utterance(["alpha", "bravo"]), silence(0.8), utterance(["delta", "echo"]), silence(1)]
    )
    assert [f.text for f in finals(run(policy, audio))] == ["alpha bravo", "teller echo"]
    assert set(decoder.prefixes) == {""}
