"""Fragments wait for the rest of the sentence; speech a decode skipped is decoded again.

Issue 8, traced on natural speech: tiny.en decodes a fragment of two or three words alone
badly ("Quite best qualities." for "my best qualities | if I have any", "Thou wisheth
maker." for "thou mischief maker"), and a speaker who stops after three words usually goes
on. A fragment's endpoint therefore waits ``short_endpoint_silence`` instead of
``endpoint_silence``; when nobody speaks, the final decodes exactly the audio the ordinary
endpoint would have given it. And a beam decode that jumps over seconds of speech inside
one segment ("… overstrained eyes, even[21.6 s]", 16 words never decoded) is decoded again
from the gap.

Audio, VAD and decoder are the synthetic ones of ``test_policy``.
"""

from __future__ import annotations

import numpy as np
import pytest

from echopanel.asr.policy import PolicyConfig, StreamingPolicy

from .test_policy import ScriptedDecoder, finals, make, partials, run, silence, utterance
from .test_policy_beside import start_early_final

DEFAULT = PolicyConfig()


def fragments_on(decoder: ScriptedDecoder | None = None, **config: object) -> StreamingPolicy:
    """The policy with the default fragment settings (``make`` turns them off)."""
    return make(decoder, short_words=DEFAULT.short_words, **config)


def test_the_defaults_hold_a_fragment_open_longer_than_an_utterance() -> None:
    assert DEFAULT.short_words >= 1
    assert DEFAULT.short_endpoint_silence > DEFAULT.endpoint_silence


def test_a_fragment_and_what_follows_a_short_pause_are_one_final() -> None:
    audio = np.concatenate(
        [
            utterance(["alpha", "bravo"]),
            silence(0.8),  # over the 0.5 s endpoint, under the fragment's 1.2 s
            utterance(["charlie", "delta", "echo"]),
            silence(1.5),
        ]
    )
    assert [f.text for f in finals(run(fragments_on(), audio))] == [
        "alpha bravo charlie delta echo"
    ]
    # Without it the fragment is a final of its own.
    assert [f.text for f in finals(run(make(), audio))] == ["alpha bravo", "charlie delta echo"]


def test_a_fragment_nobody_continues_is_final_later_with_the_same_audio() -> None:
    fragment = utterance(["alpha", "bravo"])
    held, plain = ScriptedDecoder(), ScriptedDecoder()
    policy = fragments_on(held)
    assert finals(run(policy, np.concatenate([fragment, silence(1.0)]))) == []
    out = run(policy, silence(0.5))
    assert [f.text for f in finals(out)] == ["alpha bravo"]
    assert [f.text for f in finals(run(make(plain), np.concatenate([fragment, silence(1.5)])))] == [
        "alpha bravo"
    ]
    # The final decoded the audio up to the ordinary endpoint, not the longer silence.
    assert [c for c in held.calls if c[2] > 1] == [c for c in plain.calls if c[2] > 1]


def test_an_utterance_of_more_words_ends_at_the_ordinary_endpoint() -> None:
    policy = fragments_on()
    words = ["alpha", "bravo", "charlie", "delta", "echo"]
    out = run(policy, np.concatenate([utterance(words), silence(0.7)]))
    assert [f.text for f in finals(out)] == [" ".join(words)]


def test_a_long_utterance_without_partials_is_not_a_fragment() -> None:
    """Under load the partials may not have run (no words heard): an utterance with
    ``short_speech`` seconds of speech frames still ends at the ordinary endpoint."""
    policy = fragments_on(emit_partials=False, decode_interval=100.0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]  # 2.4 s of speech
    out = run(policy, np.concatenate([utterance(words), silence(0.7)]))
    assert partials(out) == []
    assert [f.text for f in finals(out)] == [" ".join(words)]


def test_a_fragment_early_final_is_still_the_final_when_nobody_goes_on() -> None:
    decoder = ScriptedDecoder()
    policy = fragments_on(decoder)
    runner, _ = start_early_final(policy, ["alpha", "bravo"])
    runner.run_now()
    beams = [c for c in decoder.calls if c[2] > 1]
    out = run(policy, silence(0.6), chunk=800)  # past the ordinary endpoint: still open
    assert finals(out) == [] and not policy.final_pending
    out = run(policy, silence(0.6), chunk=800)
    out += policy.settle(wait=False)
    assert [f.text for f in finals(out)] == ["alpha bravo"]
    assert runner.started == 1 and runner.dropped == []
    assert [c for c in decoder.calls if c[2] > 1] == beams


def test_speech_inside_a_fragment_pause_drops_its_early_final() -> None:
    policy = fragments_on()
    runner, early = start_early_final(policy, ["alpha", "bravo"])
    run(policy, silence(0.5), chunk=800)  # 0.8 s of silence: held open
    run(policy, utterance(["charlie", "delta", "echo"]), chunk=800)
    assert runner.dropped == [early]
    runner.pending.remove(early)
    out = run(policy, silence(0.8), chunk=800)
    runner.run_now()
    out += policy.settle(wait=False)
    assert [f.text for f in finals(out)] == ["alpha bravo charlie delta echo"]


@pytest.mark.parametrize("skip", [(2, 8), (1, 7)])
def test_speech_a_beam_decode_jumped_over_is_decoded_again(skip: tuple[int, int]) -> None:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
    decoder = ScriptedDecoder(skip_beam=skip)
    # No partials after the first (they would have heard the words, and a final with
    # fewer than 3/4 of them is retried greedily, which hides the skip).
    policy = make(decoder, decode_interval=100.0)
    out = run(policy, np.concatenate([utterance(words), silence(1.0)]))
    assert [f.text for f in finals(out)] == [" ".join(words)]
    beams = [c for c in decoder.calls if c[2] > 1]
    assert len(beams) == 2
    # The second decode starts at the gap, with the words before it as the prompt.
    assert beams[1][0] < beams[0][0]
    assert beams[1][1].endswith(" ".join(words[: skip[0]]))


def test_a_short_gap_between_words_is_not_a_skip() -> None:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"]
    decoder = ScriptedDecoder(skip_beam=(3, 6))  # 1.2 s of speech jumped over
    out = run(
        make(decoder, decode_interval=100.0), np.concatenate([utterance(words), silence(1.0)])
    )
    assert [c for c in decoder.calls if c[2] > 1] == [decoder.calls[-1]]
    assert finals(out)[0].text.split() == words[:3] + words[6:]
