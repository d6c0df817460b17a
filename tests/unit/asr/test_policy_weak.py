"""Weak speech is not silence (issue 8, the MFA "cold corpus" speaker).

Silero scored many frames of a hoarse voice 0.1-0.3, below the 0.3 gate: the policy ended
utterances in the middle of its words, trimmed its first words away before a clear frame
arrived, and dropped its low-probability words as hallucinations "over silence". Silence
and noise still produce nothing and end utterances as fast as before.

Audio and decoder are the synthetic ones of ``test_policy``; :class:`ScoredVad` gives each
word the Silero score of the scenario and silence either zeros or noise-like scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import numpy as np
import numpy.typing as npt
import pytest

from echopanel.asr.policy import DecodedSegment, PolicyConfig, StreamingPolicy, Word

from .test_policy import (
    FRAME,
    GAP_S,
    VOCAB,
    WORD_S,
    ScriptedDecoder,
    finals,
    run,
    silence,
    utterance,
)
from .test_policy_beside import LaterRunner

SPEECH_END = 6 * (WORD_S + GAP_S) - GAP_S  # end of a 6-word utterance


class ScoredVad:
    """Frames of a word score ``scores[word]`` (``clear`` if absent); silent frames score
    ``floor`` or, with ``noise``, seeded scores shaped like Silero's on white noise
    (mean 0.02, p99 0.15, never above 0.28)."""

    frame_samples = FRAME

    def __init__(
        self,
        scores: Mapping[str, float] | None = None,
        *,
        clear: float = 0.9,
        floor: float = 0.0,
        noise: bool = False,
    ) -> None:
        self.scores = dict(scores or {})
        self.clear = clear
        self.floor = floor
        self.noise = np.random.default_rng(8) if noise else None

    def speech_probs(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        amp = np.abs(audio.reshape(-1, FRAME)).max(axis=1)
        out = np.full(len(amp), self.floor, dtype=np.float32)
        if self.noise is not None:
            out += np.minimum(self.noise.beta(0.5, 20, len(amp)), 0.28).astype(np.float32)
        for i, a in enumerate(amp):
            idx = round((float(a) - 0.1) / 0.01) - 1
            if a > 0.05 and 0 <= idx < len(VOCAB):
                out[i] = self.scores.get(VOCAB[idx], self.clear)
        return out


def make(
    vad: ScoredVad, decoder: ScriptedDecoder | None = None, **config: float
) -> StreamingPolicy:
    config.setdefault("short_words", 0)  # as in test_policy.make
    return StreamingPolicy(decoder or ScriptedDecoder(), vad, PolicyConfig(**config))  # type: ignore[arg-type]


WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]


def test_weak_words_inside_an_utterance_do_not_end_it() -> None:
    # s1 of the replay: "So this is the" ended at 0.1-0.2 frames inside "this is the",
    # "sick corpus" was trimmed undecoded, each fragment decoded alone.
    vad = ScoredVad({"charlie": 0.15, "delta": 0.15}, clear=0.45)
    fin = finals(run(make(vad), np.concatenate([utterance(WORDS), silence(1.5)])))
    assert [f.text for f in fin] == [" ".join(WORDS)]


def test_weak_speech_before_the_first_clear_frame_is_kept() -> None:
    # s2 of the replay: "um I have a cold" scored 0.1-0.29; every decode tick trimmed it to
    # the 0.4 s pre-roll because no frame had reached the gate yet.
    vad = ScoredVad({"alpha": 0.15, "bravo": 0.15, "charlie": 0.2}, clear=0.45)
    audio = np.concatenate([silence(1), utterance(WORDS), silence(1.5)])
    fin = finals(run(make(vad), audio))
    assert [f.text for f in fin] == [" ".join(WORDS)]
    assert fin[0].t0 == pytest.approx(1.0)


def test_a_breath_between_sentences_of_a_clear_voice_still_ends_the_utterance() -> None:
    # s3 of the replay: between two LibriSpeech sentences (Silero 0.95) a breath scored
    # 0.14-0.17 for 0.4 s; taken for weak speech it merged the sentences into one 13 s
    # buffer whose final decode lost the second half.
    vad = ScoredVad({"golf": 0.16}, clear=0.95, floor=0.06)
    audio = np.concatenate(
        [
            utterance(["alpha", "bravo"]),
            silence(0.15),
            utterance(["golf"]),
            silence(0.1),
            utterance(["charlie", "delta"]),
            silence(1),
        ]
    )
    policy = make(vad, word_vad_pad=0.1)
    fin = finals(run(policy, audio))
    assert fin[0].text == "alpha bravo"
    assert fin[-1].text == "charlie delta"


@attrs.define
class UnsureDecoder(ScriptedDecoder):
    """tiny.en on a hoarse voice: the right words at probability 0.05."""

    def decode(
        self, audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        segments = super().decode(audio, prompt=prompt, beam_size=beam_size, prefix=prefix)
        return [
            attrs.evolve(s, words=tuple(attrs.evolve(w, probability=0.05) for w in s.words))
            for s in segments
        ]


def test_unsure_words_over_weak_speech_are_not_taken_for_hallucinations() -> None:
    # s1: "have a cold, so I place them a little bit differently" (p 0.08-0.9) over frames
    # of 0.1-0.3 was dropped whole: anomalous words over audio "mostly silent" at the gate.
    vad = ScoredVad({w: 0.18 for w in ["bravo", "charlie", "echo", "foxtrot"]}, clear=0.45)
    audio = np.concatenate([silence(1), utterance(WORDS), silence(1.5)])
    fin = finals(run(make(vad, UnsureDecoder()), audio))
    assert [f.text for f in fin] == [" ".join(WORDS)]


def test_a_phrase_stacked_on_one_instant_over_weak_speech_is_still_dropped() -> None:
    # s1 (replay): "I'm saying a bunch of different words that I did not say in the original
    # one." said again as its own segment, every word within 0.02 s, over the cold voice.
    start = 1.0 + 4 * (WORD_S + GAP_S) + 0.1  # inside "echo", a weak word
    ghost = tuple(
        Word(text=f" {t}", start=start, end=start + 0.005, probability=0.9)
        for t in ["said", "again", "all", "at", "once"]
    )
    vad = ScoredVad({w: 0.18 for w in ["bravo", "charlie", "echo", "foxtrot"]}, clear=0.45)
    audio = np.concatenate([silence(1), utterance(WORDS), silence(1.5)])
    fin = finals(run(make(vad, ScriptedDecoder(ghost=ghost)), audio))
    assert [f.text for f in fin] == [" ".join(WORDS)]


@attrs.define
class RestackingDecoder(ScriptedDecoder):
    """A final decode that says the utterance's first words again, all stacked on one
    instant 0.6 s before the audio's end, inside the same segment as the speech."""

    def decode(
        self, audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        segments = list(super().decode(audio, prompt=prompt, beam_size=beam_size, prefix=prefix))
        if beam_size > 1 and segments[0].words:
            at = len(audio) / 16000 - 0.6
            again = [attrs.evolve(w, start=at, end=at + 0.001) for w in segments[0].words[:3]]
            words = sorted([*segments[0].words, *again], key=lambda w: w.start)
            segments[0] = attrs.evolve(segments[0], words=tuple(words))
        return segments


def test_words_stacked_inside_the_speech_segment_over_weak_speech_are_dropped() -> None:
    # s1 (replay): "I'm saying a bunch of different words that I did not say in the original
    # one." again at 83.41-83.43 s: 15 words in 20 ms over the cold voice, no clear frame
    # within 0.4 s. Squeezed words are not taken for weak speech.
    words = [*WORDS, "golf", "hotel", "india"]  # the stacked words come after 8 good ones
    weak = ["bravo", "charlie", "echo", "foxtrot", "hotel", "india"]
    vad = ScoredVad(dict.fromkeys(weak, 0.18), clear=0.45)
    audio = np.concatenate([silence(1), utterance(words), silence(1.5)])
    fin = finals(run(make(vad, RestackingDecoder()), audio))
    assert [f.text for f in fin] == [" ".join(words)]


def test_a_segment_of_words_all_stacked_on_one_instant_is_dropped_even_over_speech() -> None:
    # s1 (replay): after an endpoint, the final decode of a 1.6 s buffer of "uh" re-emitted
    # the previous final ("I'm saying a bunch of different words that I did not say in the
    # original one.") as one segment, 15 words within 20 ms, next to frames above the gate.
    ghost = tuple(
        Word(text=f" {t}", start=1.2 + 0.001 * i, end=1.2 + 0.001 * (i + 1), probability=0.98)
        for i, t in enumerate(["said", "again", "all", "at", "once"])
    )
    policy = make(ScoredVad(), ScriptedDecoder(ghost=ghost))
    fin = finals(run(policy, np.concatenate([utterance(WORDS), silence(1.5)])))
    assert [f.text for f in fin] == [" ".join(WORDS)]


def test_unsure_words_over_silence_are_still_dropped() -> None:
    ghost = attrs.evolve(
        ScriptedDecoder().decode(utterance(["golf"]), prompt="", beam_size=1)[0].words[0],
        text=" ghost",
        start=3.0,
        end=3.3,
        probability=0.05,
    )
    decoder = ScriptedDecoder(ghost=(ghost,))
    audio = np.concatenate([utterance(["alpha", "bravo"]), silence(2.5)])
    fin = finals(run(make(ScoredVad(noise=True), decoder), audio))
    assert [f.text for f in fin] == ["alpha bravo"]


@pytest.mark.parametrize("noise", [False, True])
def test_the_final_comes_as_fast_after_speech_followed_by_noise(noise: bool) -> None:
    policy = make(ScoredVad(noise=noise))
    assert finals(run(policy, utterance(WORDS))) == []
    assert finals(policy.feed(silence(0.3))) == []
    assert [f.text for f in finals(policy.feed(silence(0.3)))] == [" ".join(WORDS)]


def test_noise_alone_reaches_nothing_and_the_buffer_stays_small() -> None:
    decoder = ScriptedDecoder()
    policy = make(ScoredVad(noise=True), decoder)
    cfg = policy.config
    for _ in range(300):  # 30 s
        assert policy.feed(silence(0.1)) == []
        assert policy.buffer_seconds <= cfg.preroll + cfg.decode_interval + 0.05
    assert policy.flush() == []
    assert decoder.calls == []


def test_weak_scores_without_speech_are_not_decoded_and_stay_bounded() -> None:
    # Babble or music scoring 0.15 for a long time: kept as a possible weak onset, never
    # decoded without a clear frame, and never more than weak_keep + pre-roll of it.
    decoder = ScriptedDecoder()
    policy = make(ScoredVad(floor=0.15), decoder)
    cfg = policy.config
    for _ in range(200):  # 20 s
        assert policy.feed(silence(0.1)) == []
        assert policy.buffer_seconds <= cfg.weak_keep + cfg.preroll + cfg.decode_interval + 0.05
    assert decoder.calls == []


def test_a_long_weak_stretch_ends_the_utterance_anyway() -> None:
    # Speech followed by babble that Silero scores 0.15 throughout: the final must not wait
    # for the buffer limit.
    policy = make(ScoredVad(floor=0.15))
    updates = run(policy, utterance(WORDS), chunk=320)
    waited = 0.0
    while not finals(updates) and waited < 5.0:
        updates = policy.feed(silence(0.02))
        waited += 0.02
    assert [f.text for f in finals(updates)] == [" ".join(WORDS)]
    assert waited <= policy.config.weak_max_silence + GAP_S + 0.05


@pytest.mark.parametrize(("floor", "early"), [(0.15, False), (0.0, True)])
def test_no_early_final_while_the_frames_under_the_gate_average_weak_speech(
    floor: float, early: bool
) -> None:
    # The cold corpus speaker live: an early final started after 0.25 s of frames under the
    # gate that were the hoarse voice going on (mean 0.14 against a weak threshold of 0.10).
    # Its decode heard that voice repeated as the endpoint's silence and came back as "So
    # I'm going to do it. So" for "uh and". Quiet frames still start one.
    policy = make(ScoredVad(dict.fromkeys(WORDS, 0.4), floor=floor))
    policy.final_runner = LaterRunner()
    run(policy, np.concatenate([utterance(WORDS), silence(0.3)]), chunk=800)
    assert (policy.begin_early_final(0.25) is not None) is early


def test_weak_speech_while_a_fragment_is_held_open_belongs_to_it() -> None:
    # A hoarse voice's fragment held open (test_policy_fragments) and its next words under
    # the gate: they go on the utterance, as weak speech always does, instead of being cut
    # off at the point where the fragment's endpoint was first due.
    vad = ScoredVad({"charlie": 0.15, "delta": 0.15}, clear=0.45)
    audio = np.concatenate(
        [
            utterance(["alpha", "bravo"]),
            silence(0.6),  # past the 0.5 s endpoint: the fragment is held open
            utterance(["charlie", "delta"]),
            silence(2.0),
        ]
    )
    policy = make(vad, short_words=PolicyConfig().short_words)
    assert [f.text for f in finals(run(policy, audio))] == ["alpha bravo charlie delta"]


@attrs.define
class SqueezingDecoder(ScriptedDecoder):
    """Every decode squeezes ``squeezed`` words to no time, as tiny.en times a word or two
    of a hoarse voice's sentence."""

    squeezed: frozenset[str] = frozenset()

    def decode(
        self, audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        segments = super().decode(audio, prompt=prompt, beam_size=beam_size, prefix=prefix)
        return [
            attrs.evolve(
                seg,
                words=tuple(
                    attrs.evolve(w, end=w.start) if w.text.strip() in self.squeezed else w
                    for w in seg.words
                ),
            )
            for seg in segments
        ]


def test_a_weak_voice_sentence_with_two_squeezed_words_is_heard() -> None:
    # s2, live at 4 sessions: "Alright, so this is the sick corpus. Hopefully the recording
    # levels are okay." over the cold voice, "so" and "Hopefully" timed at no length: taken
    # for a stacked hallucination, the whole final (14 words) was dropped.
    vad = ScoredVad(dict.fromkeys(["bravo", "charlie", "echo", "foxtrot"], 0.18), clear=0.45)
    decoder = SqueezingDecoder(squeezed=frozenset({"bravo", "echo"}))
    audio = np.concatenate([silence(1), utterance(WORDS), silence(1.5)])
    fin = finals(run(make(vad, decoder), audio))
    assert [f.text for f in fin] == [" ".join(WORDS)]
    # Stacked on average, over the same weak voice, they are still dropped.
    stacked = SqueezingDecoder(squeezed=frozenset(WORDS))
    assert finals(run(make(vad, stacked), audio)) == []
