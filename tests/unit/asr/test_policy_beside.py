"""Decodes beside the policy: partial jobs and finals handed to a runner (issue 9).

A live stream must keep taking audio while its decodes wait for the shared engine. The
policy hands a partial decode out as a :class:`PartialJob` and, with a ``final_runner``, a
final as a :class:`FinalJob`; these tests drive both by hand with the scripted decoder and
energy VAD of ``test_policy`` and check that the transcript is the one the inline path makes,
that stale results are dropped, and that nothing of the next utterance overtakes a final.
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

from echopanel.asr.policy import DecodedSegment, FinalJob, PartialJob, StreamingPolicy
from echopanel.ports import AsrFinalUpdate, AsrUpdate

from .test_policy import (
    ScriptedDecoder,
    finals,
    make,
    partials,
    phrase,
    run,
    silence,
    utterance,
)


class LaterRunner:
    """Runs a final's job only when asked (``run_now``) or waited for: the decode is "slow"."""

    def __init__(self) -> None:
        self.pending: list[FinalJob] = []
        self.started = 0
        self.waited = 0
        self.dropped: list[FinalJob] = []

    def start(self, job: FinalJob) -> None:
        self.started += 1
        self.pending.append(job)

    def wait(self, job: FinalJob) -> None:
        self.waited += 1
        assert job in self.pending, "waited for a job that was never started"
        self.run_now()

    def drop(self, job: FinalJob) -> None:
        assert job in self.pending or job.done, "dropped a job that was never started"
        self.dropped.append(job)

    def run_now(self) -> None:
        jobs, self.pending = self.pending, []
        for job in jobs:
            job.run()


def beside(policy: StreamingPolicy, audio: npt.NDArray[np.float32], chunk: int,
           every: int, early: bool = False) -> list[AsrUpdate]:  # fmt: skip
    """Feed like WhisperStream does in the background: settle a finished final before each
    chunk; partial jobs run "later" (decoded right away, applied one chunk later); a final's
    job runs after ``every`` chunks (or when the next endpoint waits for it)."""
    runner = LaterRunner()
    policy.final_runner = runner
    out: list[AsrUpdate] = []
    job = None
    for n, i in enumerate(range(0, len(audio), chunk)):
        if job is not None:
            out += policy.finish_partial(job)
            job = None
        if n % every == 0:
            runner.run_now()
        out += policy.settle(wait=False)
        out += policy.feed(audio[i : i + chunk], partials=False)
        out += policy.settle(wait=False)
        if early and policy.begin_early_final(0.25) is not None:
            continue
        if not policy.final_pending:
            job = policy.begin_partial()
            if job is not None:
                policy.decode_partial(job)
    if job is not None:
        out += policy.finish_partial(job)
    return out + policy.flush()


@settings(max_examples=30, deadline=None)
@given(
    phrases=st.lists(phrase, min_size=1, max_size=4),
    pauses=st.lists(st.floats(0.6, 2.0), min_size=4, max_size=4),
    chunk=st.integers(800, 4000),
    every=st.integers(1, 12),
    early=st.booleans(),
)
def test_finals_decoded_beside_the_policy_are_the_inline_finals(
    phrases: list[list[str]], pauses: list[float], chunk: int, every: int, early: bool
) -> None:
    parts = []
    for words, pause in zip(phrases, pauses, strict=False):
        parts += [utterance(words), silence(pause)]
    audio = np.concatenate(parts)
    reference = make()
    expected = finals(run(reference, audio, chunk=chunk) + reference.flush())
    got = beside(make(), audio, chunk, every, early)
    assert [f.text for f in finals(got)] == [f.text for f in expected]
    assert [f.text.split() for f in finals(got)] == phrases
    # Finals are ordered and numbered in order; a partial belongs to the utterance whose
    # final comes next (none of the next utterance before the previous final), none after
    # the last final.
    fin = finals(got)
    assert all(a.t1 <= b.t0 for a, b in itertools.pairwise(fin))
    assert [f.segment_id[:5] for f in fin] == [f"{i:05d}" for i in range(len(fin))]
    for k, u in enumerate(got):
        if not isinstance(u, AsrFinalUpdate):
            following = finals(got[k:])
            assert following and u.t0 <= following[0].t1


def test_the_stream_goes_on_while_a_final_decodes_and_waits_for_it_at_the_next_endpoint() -> None:
    decoder = ScriptedDecoder()
    policy = make(decoder)
    runner = LaterRunner()
    policy.final_runner = runner
    first = run(policy, np.concatenate([utterance(["alpha", "bravo"]), silence(0.8)]))
    assert runner.started == 1 and policy.final_pending
    assert finals(first) == []  # the final is decoding beside the policy
    calls = len(decoder.calls)
    # The next utterance's audio is taken, but no partial is decoded before the final.
    second = run(policy, utterance(["charlie", "delta"]))
    assert partials(second) == [] and len(decoder.calls) == calls
    # Its endpoint waits for the first final (its context) and hands over the second.
    third = run(policy, silence(0.8))
    assert runner.waited == 1
    assert [f.text for f in finals(third)] == ["alpha bravo"]
    runner.run_now()
    assert [f.text for f in finals(policy.settle(wait=False))] == ["charlie delta"]
    assert not policy.final_pending
    # The second final was decoded after the first one's end (its context).
    assert decoder.prefixes[-1] == "alpha bravo"


def last_partial_job(policy: StreamingPolicy, speech: npt.NDArray[np.float32]) -> PartialJob:
    """Feed ``speech`` without decoding; the last partial job that came due."""
    job = None
    for i in range(0, len(speech), 800):
        policy.feed(speech[i : i + 800], partials=False)
        job = policy.begin_partial() or job
    assert job is not None
    return job


def test_a_partial_job_applies_while_audio_keeps_coming() -> None:
    policy = make()
    speech = utterance(["alpha", "bravo", "charlie"])
    job = last_partial_job(policy, speech)
    assert len(job.audio) <= len(speech)
    policy.decode_partial(job)
    policy.feed(utterance(["delta", "echo"]), partials=False)  # more audio meanwhile
    shown = partials(policy.finish_partial(job))
    assert [p.text.split()[:2] for p in shown] == [["alpha", "bravo"]]
    assert shown[0].t1 <= len(speech) / 16000 + 1e-6  # only what the job heard


def test_a_partial_overtaken_by_an_endpoint_is_dropped() -> None:
    policy = make()
    job = last_partial_job(policy, utterance(["alpha", "bravo", "charlie"]))
    policy.decode_partial(job)
    out = policy.feed(silence(1.0), partials=False)  # the endpoint: the final, inline
    assert [f.text for f in finals(out)] == ["alpha bravo charlie"]
    assert policy.finish_partial(job) == []  # its words belong to a final already


@attrs.define
class StopsAfterContextDecoder(ScriptedDecoder):
    """Forced to a prefix, says nothing more (tiny.en ending the decode right after the
    context over 2 s of speech)."""

    def decode(
        self, audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        segments = super().decode(audio, prompt=prompt, beam_size=beam_size, prefix=prefix)
        return [] if prefix else segments


def test_a_context_decode_that_stops_after_the_context_is_decoded_alone() -> None:
    # Fed with no partial decodes (as a stream whose partials lag behind under load), so
    # only the speech heard by the VAD tells the final is missing words.
    decoder = StopsAfterContextDecoder()
    policy = make(decoder)
    audio = np.concatenate(
        [
            utterance(["alpha", "bravo", "charlie"]),
            silence(0.8),
            utterance(["delta", "echo", "foxtrot", "golf", "hotel"]),
            silence(1),
        ]
    )
    out: list[AsrUpdate] = []
    for i in range(0, len(audio), 1600):
        out += policy.feed(audio[i : i + 1600], partials=False)
    assert [f.text for f in finals(out)] == [
        "alpha bravo charlie",
        "delta echo foxtrot golf hotel",
    ]
    assert decoder.prefixes[-2:] == ["alpha bravo charlie", ""]


def test_a_phrase_repeated_after_a_pause_is_kept() -> None:
    # "alpha bravo charlie ... alpha bravo charlie": a speaker saying it again is not the
    # decoder repeating its context.
    policy = make()
    audio = np.concatenate(
        [utterance(["alpha", "bravo", "charlie"]), silence(1.0)] * 2 + [silence(0.5)]
    )
    out = finals(run(policy, audio, chunk=80) + policy.flush())
    assert [f.text for f in out] == ["alpha bravo charlie", "alpha bravo charlie"]


def start_early_final(
    policy: StreamingPolicy, words: Sequence[str]
) -> tuple[LaterRunner, FinalJob]:
    """Give ``policy`` a :class:`LaterRunner`, feed ``words`` and 0.3 s of silence, and
    start the early final (after 0.25 s of it); the runner has not run it yet."""
    runner = LaterRunner()
    policy.final_runner = runner
    run(policy, utterance(words), chunk=800)
    run(policy, silence(0.3), chunk=800)  # 0.3 s of the 0.5 s endpoint silence
    job = policy.begin_early_final(0.25)
    assert job is not None and runner.started == 1
    return runner, job


def test_an_early_final_is_the_final_when_the_endpoint_follows() -> None:
    decoder = ScriptedDecoder()
    policy = make(decoder)
    runner, _ = start_early_final(policy, ["alpha", "bravo", "charlie"])
    assert policy.begin_early_final(0.25) is None  # one at a time
    runner.run_now()  # decoded before the endpoint
    beams = [c for c in decoder.calls if c[2] > 1]
    out = run(policy, silence(0.5), chunk=800)  # the endpoint
    out += policy.settle(wait=False)
    assert [f.text for f in finals(out)] == ["alpha bravo charlie"]
    assert runner.started == 1  # the endpoint took the early decode: no second final decode
    assert [c for c in decoder.calls if c[2] > 1] == beams
    assert runner.dropped == []


@pytest.mark.parametrize("decoded_first", [True, False])
def test_speech_after_an_early_final_drops_it(decoded_first: bool) -> None:
    """The runner is told at the first speech frame, so a decode still waiting for the model
    can be abandoned (under load it would otherwise run as a final ahead of every partial);
    a dropped early final is never delivered, decoded or not."""
    policy = make()
    runner, early = start_early_final(policy, ["alpha", "bravo"])
    if decoded_first:
        runner.run_now()
    run(policy, utterance(["charlie"]), chunk=800)  # the speaker goes on
    assert runner.dropped == [early]
    if not decoded_first:
        runner.pending.remove(early)  # abandoned by the runner: it never runs
    out = run(policy, silence(0.8), chunk=800)
    assert runner.started == 2  # the endpoint decoded the whole utterance again
    runner.run_now()
    out += policy.settle(wait=False)
    assert [f.text for f in finals(out)] == ["alpha bravo charlie"]
    assert early not in runner.pending and early.done is decoded_first  # never delivered
    assert bool(early.updates) is decoded_first


def test_an_early_final_the_stream_ends_before_its_endpoint_is_dropped() -> None:
    # Flushed 0.3 s into the silence: the last utterance is made final inline, so the early
    # decode (still waiting, under load) is withdrawn instead of running for nothing.
    decoder = ScriptedDecoder()
    policy = make(decoder)
    runner = LaterRunner()
    policy.final_runner = runner
    run(policy, np.concatenate([utterance(["alpha", "bravo"]), silence(0.3)]), chunk=800)
    early = policy.begin_early_final(0.25)
    assert early is not None
    out = policy.flush()
    assert runner.dropped == [early]
    assert [f.text for f in finals(out)] == ["alpha bravo"]


def test_no_early_final_without_a_runner_or_before_enough_silence() -> None:
    policy = make()
    run(policy, np.concatenate([utterance(["alpha", "bravo"]), silence(0.3)]), chunk=800)
    assert policy.begin_early_final(0.25) is None  # inline policy: finals at the endpoint
    policy.final_runner = LaterRunner()
    assert policy.begin_early_final(0.45) is None  # only 0.4 s of silence so far
    assert policy.begin_early_final(0.25) is not None


@attrs.define
class RecordingDecoder(ScriptedDecoder):
    """The scripted decoder, keeping the audio of every decode."""

    audios: list[npt.NDArray[np.float32]] = attrs.Factory(list)

    def decode(
        self, audio: npt.NDArray[np.float32], *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        self.audios.append(np.asarray(audio))
        return super().decode(audio, prompt=prompt, beam_size=beam_size, prefix=prefix)


def test_an_early_final_hears_as_much_trailing_silence_as_the_endpoint() -> None:
    """tiny.en's words change with the silence that ends the audio: the early decode repeats
    the silence heard so far, so it decodes as long an audio as the endpoint's final would."""
    inline_decoder = ScriptedDecoder()
    inline = make(inline_decoder)
    audio = np.concatenate([utterance(["alpha", "bravo", "charlie"]), silence(1.0)])
    run(inline, audio, chunk=800)
    (inline_final,) = [c for c in inline_decoder.calls if c[2] > 1]

    decoder = RecordingDecoder()
    policy = make(decoder)
    runner = LaterRunner()
    policy.final_runner = runner
    run(policy, utterance(["alpha", "bravo", "charlie"]), chunk=800)
    run(policy, silence(0.3), chunk=800)
    job = policy.begin_early_final(0.25)
    assert job is not None
    runner.run_now()
    early_audio = decoder.audios[-1]
    assert decoder.calls[-1][0] == inline_final[0]  # as long as the endpoint's final decode
    pad = len(early_audio) - job.end
    assert pad > 0
    assert not np.any(np.abs(early_audio[-pad:]) > 0.05)  # silence, repeated
    assert decoder.calls[-1][0] > job.end / 16000
    out = run(policy, silence(0.7), chunk=800) + policy.settle(wait=False)
    assert [f.text for f in finals(out)] == ["alpha bravo charlie"]
