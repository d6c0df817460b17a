"""Streaming ASR policy: turns a stream of audio into partials and finals.

Theory of operation
-------------------
The policy is a plain object, one per source, fed with float32 mono 16 kHz audio. It imports
no model, no clock and no threads: the speech model (:class:`Decoder`) and the voice-activity
detector (:class:`Vad`) are injected, so the same logic runs against a scripted fake in the
unit tests and against Whisper + Silero in production (``echopanel.asr.whisper``).

* **Rolling buffer.** Audio accumulates in a buffer that starts ``preroll`` seconds before
  the current utterance's onset (anchored to its first frame over the gate, so what a final
  decodes depends on the audio alone, not on how it arrived). Every ``decode_interval``
  seconds of new audio the whole buffer is re-decoded.
* **VAD gate.** Every complete VAD frame gets a speech probability as it arrives. While the
  buffer holds less than ``min_speech`` seconds of speech nothing is decoded and the buffer
  is trimmed to a short pre-roll: silence and noise never reach the model.
* **Weak voices.** A hoarse or distant voice scores 0.1-0.3 on Silero for whole words. For a
  voice whose clear frames average under ``weak_voice_level``, audio averaging at least
  ``weak_ratio`` of that level (and ``weak_threshold``) over ``endpoint_silence`` is weak
  speech, not silence: it does not end an utterance (for up to ``weak_max_silence``), the
  gate keeps up to ``weak_keep`` seconds of it before the first clear frame, and the word
  and hallucination guards accept words over it. Silence and noise average far below.
* **LocalAgreement-2.** The words of a hypothesis after the last committed word are compared
  with the previous hypothesis; their longest common prefix is *committed*.
* **Partials.** Everything of the current utterance not yet in a final (committed words plus
  the unconfirmed tail) is sent as one :class:`~echopanel.ports.AsrPartialUpdate`, which
  replaces the previous partial of the source. A final clears the partial it covers; when a
  partial follows a final in the same update list it carries the remainder.
* **Finals.** A VAD endpoint (``endpoint_silence`` seconds of silence after speech) decodes
  the buffer once more (with the wider ``final_beam_size``; the buffer holds the whole
  utterance since the last final, committed words included) and turns it into an
  :class:`~echopanel.ports.AsrFinalUpdate`; the buffer is trimmed. When the buffer nears
  ``max_buffer`` seconds, the next decode is a final's (wider beam, context, retries) and
  its words up to the last committed word become a final -- back to the last sentence end
  among them, if that keeps a third of the buffer -- and the buffer is trimmed there, so
  never more than ``max_buffer`` seconds are re-decoded. ``flush()`` (end of stream) turns
  everything pending into finals.
* **Context of a final.** An utterance cut at a short pause ("my best qualities | if I have
  any...") decoded alone loses what offline decoding hears before it ("Hi best quantities").
  So when the last final ended at most ``context_gap`` seconds before the buffer, the final
  decode hears the last ``context_seconds`` of that final's audio first, forced to its known
  text (the decoder's ``prefix``), and returns only the words after it: the acoustic and
  textual context of offline decoding, with nothing said twice and no word cut by times.
* **Prompt.** The text of recent finals (the committed text from before the buffer, without
  a context prefix) is the decoding prompt; the decoder must not condition on its own
  previous output otherwise.
* **Guards.** Segments with a high no-speech probability and a low average log-probability,
  a very low average log-probability or a high compression ratio are dropped; a segment
  mostly where the VAD heard no speech is dropped when its words look hallucinated (near-zero
  probability, squeezed or stretched timestamps: :func:`is_anomalous`) or are a stock
  sign-off ("Thank you."): tiny.en appends those to a buffer that ends in a pause. Words
  that lie where the VAD heard no speech are dropped; repetition loops are cut and a phrase
  of 3+ words never repeats back to back; a final decode that stopped early (one word
  stretched over seconds of speech, or clearly fewer words than the partials heard) is
  decoded again greedily, and the longer hypothesis kept. A short blocklist of Whisper's
  classic silence hallucinations is also applied to whole finals when the utterance had
  little speech or a low confidence.
* **Times.** ``t0``/``t1`` are seconds since the source stream began; finals are monotonic.
  ``segment_id`` is ``<prefix><index>-<hash of text and times>``: stable for the same audio,
  unique per stream.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Sequence
from typing import Final, Protocol

import attrs
import numpy as np
import numpy.typing as npt

from echopanel.ports import AsrFinalUpdate, AsrPartialUpdate, AsrTuning, AsrUpdate

__all__ = [
    "HALLUCINATION_BLOCKLIST",
    "SAMPLE_RATE",
    "DecodedSegment",
    "Decoder",
    "FinalJob",
    "FinalRunner",
    "PartialJob",
    "PolicyConfig",
    "StreamingPolicy",
    "Vad",
    "Word",
    "break_repetitions",
    "is_anomalous",
    "is_stacked",
    "is_stock_phrase",
    "normalize_word",
    "word_anomaly",
]

SAMPLE_RATE: Final = 16000

#: Whole-utterance texts Whisper invents on silence or noise (normalized, see normalize_word).
HALLUCINATION_BLOCKLIST: Final = frozenset(
    {
        "thank you",
        "thank you very much",
        "thanks for watching",
        "thank you for watching",
        "thanks for listening",
        "please subscribe",
        "subscribe",
        "you",
        "bye",
        "bye bye",
        "okay",
        "so",
        "uh",
        "um",
        "hmm",
        "music",
    }
)

AudioArray = npt.NDArray[np.float32]

_CONTEXT_MARK: Final = -1.0e9  # the time of context words in a repetition check


@attrs.frozen(kw_only=True)
class Word:
    """One decoded word; ``start``/``end`` in seconds relative to the decoded audio."""

    text: str
    start: float
    end: float
    probability: float = 1.0


@attrs.frozen(kw_only=True)
class DecodedSegment:
    """One segment of a hypothesis with the decoder's own quality signals."""

    words: tuple[Word, ...]
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 1.0


class Decoder(Protocol):
    """A speech model: decodes the whole ``audio`` (float32, 16 kHz) with word timestamps."""

    def decode(
        self, audio: AudioArray, *, prompt: str, beam_size: int, prefix: str = ""
    ) -> Sequence[DecodedSegment]:
        """Decode ``audio``; with a ``prefix`` the hypothesis is forced to begin with that
        text (the words of the audio's start), which is not returned: only the words after
        it, timed on the whole ``audio``."""
        ...


class Vad(Protocol):
    """A voice-activity detector scoring fixed frames of ``frame_samples`` samples.

    ``speech_probs`` receives consecutive audio of a whole number of frames (the next frames
    of one stream, in order) and returns one speech probability per frame.
    """

    @property
    def frame_samples(self) -> int: ...

    def speech_probs(self, audio: AudioArray) -> npt.NDArray[np.float32]: ...


@attrs.frozen(kw_only=True)
class PolicyConfig:
    """Knobs of the policy; defaults are tuned on ``benchmarks/bench_asr.py``."""

    decode_interval: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    beam_size: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    final_beam_size: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    emit_partials: bool = True
    max_buffer: float = attrs.field(default=15.0, validator=attrs.validators.gt(1.0))
    endpoint_silence: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    short_words: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    short_speech: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))
    short_endpoint_silence: float = attrs.field(default=1.2, validator=attrs.validators.gt(0))
    vad_threshold: float = attrs.field(default=0.3, validator=attrs.validators.ge(0))
    vad_neg_threshold: float = attrs.field(default=0.2, validator=attrs.validators.ge(0))
    min_speech: float = attrs.field(default=0.25, validator=attrs.validators.ge(0))
    weak_threshold: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))
    weak_ratio: float = attrs.field(default=0.2, validator=attrs.validators.ge(0))
    weak_voice_level: float = attrs.field(default=0.7, validator=attrs.validators.ge(0))
    weak_keep: float = attrs.field(default=2.0, validator=attrs.validators.ge(0))
    weak_max_silence: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))
    preroll: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    word_vad_pad: float = attrs.field(default=0.4, validator=attrs.validators.ge(0))
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    min_avg_logprob: float = -1.5
    max_compression_ratio: float = 2.4
    max_repeats: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    repeat_phrase_words: int = attrs.field(default=3, validator=attrs.validators.ge(2))
    max_word_seconds: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))
    blocklist_max_speech: float = 1.0
    blocklist_min_confidence: float = 0.6
    prompt_chars: int = attrs.field(default=200, validator=attrs.validators.ge(0))
    context_seconds: float = attrs.field(default=6.0, validator=attrs.validators.ge(0))
    context_gap: float = attrs.field(default=1.5, validator=attrs.validators.ge(0))
    id_prefix: str = ""

    def tuned(self, tuning: AsrTuning) -> PolicyConfig:
        """This config with the server's tuning applied."""
        return attrs.evolve(
            self,
            decode_interval=tuning.decode_interval,
            beam_size=tuning.beam_size,
            final_beam_size=tuning.final_beam_size,
            emit_partials=tuning.emit_partials,
        )


_PUNCT = re.compile(r"[^\w']+")


def normalize_word(text: str) -> str:
    """Lower-case ``text`` without punctuation, for comparing words and blocklist entries."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def break_repetitions(
    words: Sequence[Word], max_repeats: int = 2, phrase_words: int = 3
) -> list[Word]:
    """Cut repetition loops: an n-gram (n ≤ 30) repeated back to back more than ``max_repeats``
    times keeps only its first ``max_repeats`` occurrences; a phrase of ``phrase_words`` or
    more words repeated back to back keeps one ("no, no" is speech; "I am sure I can sleep.
    I am sure I can sleep." is tiny.en looping over a pause), and so does a phrase of twice
    as many words repeated after one word ("X. And X.")."""
    out = list(words)
    keys = [normalize_word(w.text) for w in out]
    i = 0
    while i < len(out):
        cut = False
        for n in range(1, 31):
            gram = keys[i : i + n]
            if len(gram) < n:
                break
            reps = 1
            while keys[i + reps * n : i + (reps + 1) * n] == gram:
                reps += 1
            keep = 1 if n >= phrase_words else max_repeats
            if reps > keep:
                del out[i + keep * n : i + reps * n]
                del keys[i + keep * n : i + reps * n]
                cut = True
                break
            if n >= 2 * phrase_words and keys[i + n + 1 : i + 2 * n + 1] == gram:
                # A long phrase again after one word: "... probably good. Thanks. And
                # here's a long pause ... probably good. Thanks." (a context decode, live).
                del out[i + n : i + 2 * n + 1]
                del keys[i + n : i + 2 * n + 1]
                cut = True
                break
        if not cut:
            i += 1
    return out


def word_anomaly(word: Word) -> float:
    """How unlike a spoken word ``word`` is: improbable, squeezed to nothing or stretched.

    Whisper's hallucinations at pauses come out as words of near-zero probability or
    duration (several words stacked on the audio's last frame); the score is the one
    openai-whisper uses for its ``hallucination_silence_threshold``.
    """
    score = 0.0
    if word.probability < 0.15:
        score += 1.0
    duration = word.end - word.start
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _anomaly(words: Sequence[Word]) -> tuple[float, int]:
    """The summed :func:`word_anomaly` of a segment's first spoken words (up to 8), and
    how many there are."""
    spoken = [w for w in words if normalize_word(w.text)][:8]
    return sum(word_anomaly(w) for w in spoken), len(spoken)


def is_anomalous(words: Sequence[Word]) -> bool:
    """Whether a segment's first words (up to 8) look hallucinated rather than heard."""
    score, n = _anomaly(words)
    return n > 0 and (score >= 3 or score + 0.01 >= n)


def is_stacked(words: Sequence[Word]) -> bool:
    """Whether a segment's first words (up to 8) are squeezed to nothing or stretched on
    average (one anomaly point per word, probabilities left out): a sentence stacked on one
    instant. A heard segment has a squeezed word or two ("so", "Hopefully" at 0 s in a weak
    voice's sentence), which :func:`is_anomalous` alone counts against it."""
    score, n = _anomaly([attrs.evolve(w, probability=1.0) for w in words])
    return n > 0 and score + 0.01 >= n


def is_stock_phrase(words: Sequence[Word]) -> bool:
    """Whether ``words`` are one of Whisper's stock sign-offs ("Thank you very much.")."""
    text = normalize_word("".join(w.text for w in words))
    return text in HALLUCINATION_BLOCKLIST or text.startswith(("thank you", "thanks for"))


def _text(words: Sequence[Word]) -> str:
    return "".join(w.text for w in words).strip()


def _shares_phrase(words: Sequence[Word], text: str, n: int = 4) -> bool:
    """Whether ``words`` contain a sequence of ``n`` words that ``text`` contains too."""
    keys = [normalize_word(w.text) for w in words]
    keys = [k for k in keys if k]
    ref = f" {normalize_word(text)} "
    return any(f" {' '.join(keys[i : i + n])} " in ref for i in range(len(keys) - n + 1))


def _echoes(words: Sequence[Word], text: str, n: int) -> bool:
    """Whether ``words`` begin with the last ``n`` or more words of ``text`` (a decode
    forced to a context that said the context's end again, or a speaker who did)."""
    keys = [k for k in (normalize_word(w.text) for w in words) if k]
    ref = normalize_word(text).split()
    return any(keys[:k] == ref[-k:] for k in range(n, min(len(keys), len(ref)) + 1))


def _shifted(seg: DecodedSegment, by: float) -> DecodedSegment:
    words = tuple(attrs.evolve(w, start=w.start + by, end=w.end + by) for w in seg.words)
    return attrs.evolve(seg, words=words)


def _common_prefix(a: Sequence[Word], b: Sequence[Word]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if normalize_word(x.text) != normalize_word(y.text):
            break
        n += 1
    return n


@attrs.frozen
class _Context:
    """The end of the last final: its audio (from ``start`` to ``end``, absolute samples)
    and the text said in it, decoded again before the next utterance as forced prefix."""

    audio: AudioArray
    start: int
    end: int
    text: str


@attrs.define(eq=False)
class PartialJob:
    """One partial decode taken out of the policy (:meth:`StreamingPolicy.begin_partial`):
    the audio and prompt it decodes, and the policy's ``epoch`` when it was taken. Another
    thread may run :meth:`StreamingPolicy.decode_partial` on it while the policy keeps taking
    audio; :meth:`StreamingPolicy.finish_partial` applies ``segments`` only if the buffer has
    not been cut since (same epoch: no final, no trim)."""

    audio: AudioArray
    prompt: str
    beam_size: int
    epoch: int
    segments: Sequence[DecodedSegment] | None = None
    #: Near the buffer limit: a copy of the policy that decodes the buffer as a final
    #: (``final_beam_size``, the last final's context, the final's retries), and the
    #: guarded words it heard, which :meth:`StreamingPolicy.finish_partial` cuts the
    #: limit's final from.
    limit: StreamingPolicy | None = None
    words: list[Word] | None = None


@attrs.define(eq=False)
class FinalJob:
    """The decode of one utterance's final, taken out of the policy at its endpoint when the
    policy has a :class:`FinalRunner`: ``state`` is a copy of the policy at the endpoint, on
    which :meth:`run` (any thread) makes the final exactly as the inline path would, while
    the policy itself goes on with the next utterance's audio."""

    state: StreamingPolicy
    end: int
    updates: list[AsrUpdate] = attrs.Factory(list)
    error: BaseException | None = None
    done: bool = False

    def run(self) -> None:
        try:
            self.updates = self.state._endpoint(self.end)
        except BaseException as exc:  # re-raised by StreamingPolicy.settle
            self.error = exc
        finally:
            self.done = True


class FinalRunner(Protocol):
    """Runs :meth:`FinalJob.run` elsewhere (a thread): ``start`` begins it, ``wait`` blocks
    until it has returned, ``drop`` says its result is not wanted (an early final overtaken
    by speech: the runner may abandon the decode it still waits for)."""

    def start(self, job: FinalJob) -> None: ...

    def wait(self, job: FinalJob) -> None: ...

    def drop(self, job: FinalJob) -> None: ...


class StreamingPolicy:
    """Per-source streaming state: feed audio, get partials and finals (see module doc).

    With a ``final_runner`` the decode of a final runs beside the policy (see
    :class:`FinalJob`): at an endpoint the utterance is handed over and the policy goes on at
    once; :meth:`settle` brings the final's updates and its context back. Only one final is
    outstanding: the next endpoint (or ``flush``) waits for it, because its text is the next
    decode's context, and no partial is decoded meanwhile (a partial of the next utterance
    never comes before the final of the previous one).
    """

    def __init__(self, decoder: Decoder, vad: Vad, config: PolicyConfig | None = None) -> None:
        self._decoder = decoder
        self._vad = vad
        self.config = config if config is not None else PolicyConfig()
        self._frame = vad.frame_samples
        self._buffer: AudioArray = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0  # absolute sample index of buffer[0]; frame aligned
        self._probs: list[float] = []  # one per complete frame of the buffer
        self._vad_pos = 0  # frames of the buffer the endpoint detector has consumed
        self._since_decode = 0  # samples since the last decode (or VAD gate check)
        self._in_speech = False
        self._speech_frames = 0  # speech frames of the current utterance
        self._speech_sum = 0.0  # sum of their probabilities
        self._level = 0.0  # mean probability of the speech frames of the last utterance
        self._silence_run = 0  # frames of silence after speech
        self._committed: list[Word] = []  # absolute times; committed, not yet final
        self._tentative: list[Word] = []  # absolute times; last hypothesis after committed
        self._last_partial = ""
        self._final_text: list[str] = []  # recent finals, for the prompt
        self._context: _Context | None = None  # the end of the last final
        self._last_t1 = 0.0
        self._finals = 0
        self._epoch = 0  # bumped whenever the buffer is cut or an utterance ends
        self._echo = False  # the last context decode began with the context's end again
        # Silence a final decode hears after the buffer (an early final's: begin_early_final).
        self._tail_silence: AudioArray | None = None
        self.final_runner: FinalRunner | None = None
        self._pending: FinalJob | None = None  # a final decoding beside the policy
        # A final decoding beside the policy before its endpoint, and the utterance's
        # speech frames when it was taken (see begin_early_final).
        self._early: tuple[FinalJob, int] | None = None
        self._heard = False  # the current utterance had a partial decode
        self._deferred: tuple[int, int] | None = None  # an endpoint held open (_advance_vad)
        self._endpoint_run = 0  # the silence run at the last endpoint's end
        self.decodes = 0

    # ------------------------------------------------------------------ public

    def tune(self, tuning: AsrTuning) -> None:
        """Apply the server's tuning (decode interval, beam size, partials on/off)."""
        self.config = self.config.tuned(tuning)

    @property
    def buffer_seconds(self) -> float:
        """Seconds of audio currently held (and re-decoded at the next decode)."""
        return len(self._buffer) / SAMPLE_RATE

    @property
    def stream_seconds(self) -> float:
        """Seconds of audio fed so far."""
        return (self._buffer_start + len(self._buffer)) / SAMPLE_RATE

    def feed(self, audio: AudioArray, *, partials: bool = True) -> list[AsrUpdate]:
        """Take the next audio of the stream; return the updates it produced.

        Endpoints are decoded here (finals). With ``partials`` False the partial decode that
        may be due is left to the caller (:meth:`begin_partial`), which can run it in another
        thread while this method keeps taking audio; the result is the same as decoding
        inline when the caller runs the job at once.
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.size == 0:
            return []
        self._buffer = np.concatenate([self._buffer, audio])
        self._since_decode += audio.size
        self._score_frames()
        updates: list[AsrUpdate] = []
        while (end := self._advance_vad()) is not None:
            updates += self._on_endpoint(end)
        if partials:
            job = self.begin_partial()
            if job is not None:
                self.decode_partial(job)
                updates += self.finish_partial(job)
        return updates

    def begin_partial(self) -> PartialJob | None:
        """The partial decode due now (every ``decode_interval`` of audio, over speech), or
        None. The buffer is never changed in place, so the job's audio stays valid while
        the policy goes on (see :class:`PartialJob`)."""
        interval = int(self.config.decode_interval * SAMPLE_RATE)
        if self._pending is not None or self._early is not None:
            return None
        # The utterance's first decode comes as soon as it has ``min_speech``, not at the
        # next tick of the cadence (up to ``decode_interval`` later).
        first = not self._heard and self._has_speech()
        if self._since_decode < interval and not first:
            return None
        self._since_decode = 0
        if not self._has_speech():
            if not self._in_speech:
                # Keep weak speech-like audio (a hoarse voice before its first clear frame)
                # for the decode that follows; silence and noise keep only the pre-roll.
                # (An utterance begun, not yet ``min_speech`` long, keeps its start: the
                # buffer was anchored to its onset, see _anchor.)
                weak = self._weak_tail(len(self._probs))
                end = (len(self._probs) - weak) * self._frame if weak else len(self._buffer)
                self._trim_to_preroll(end)
            return None
        self._heard = True
        job = PartialJob(
            audio=self._buffer,
            prompt=self._prompt(),
            beam_size=self.config.beam_size,
            epoch=self._epoch,
        )
        if self._limit_near():
            job.limit = self._fork()  # its decodes are added to this policy's when applied
        else:
            self.decodes += 1
        return job

    def _limit_near(self) -> bool:
        """Whether the next decode makes the buffer limit's final: the buffer is at most
        two decode intervals from ``max_buffer`` (not under half of it)."""
        cfg = self.config
        near = max(cfg.max_buffer / 2, cfg.max_buffer - 2 * cfg.decode_interval)
        return self.buffer_seconds >= near

    def decode_partial(self, job: PartialJob) -> None:
        """Run ``job``'s decode (any thread: reads only the job, its copy of the policy and
        the decoder)."""
        if job.limit is not None:
            job.words = job.limit._final_hypothesis(len(job.audio))
            return
        job.segments = self._decoder.decode(job.audio, prompt=job.prompt, beam_size=job.beam_size)

    def finish_partial(self, job: PartialJob) -> list[AsrUpdate]:
        """Apply a decoded partial job: LocalAgreement commits, the partial, and the buffer
        limit's final. A job from before the last cut of the buffer is dropped (its words
        belong to an utterance already final)."""
        if job.epoch != self._epoch:
            return []
        if job.limit is not None and job.words is not None:
            self.decodes += job.limit.decodes
            return self._decode_step(job.words, limit=True)
        if job.segments is None:
            return []
        return self._decode_step(self._guarded(job.segments))

    @property
    def final_pending(self) -> bool:
        """A final is decoding beside the policy (see :meth:`settle`)."""
        return self._pending is not None

    @property
    def settle_ready(self) -> bool:
        """The final decoding beside the policy is done: :meth:`settle` will not wait."""
        return self._pending is not None and self._pending.done

    def settle(self, *, wait: bool = True) -> list[AsrUpdate]:
        """The updates of the final decoding beside the policy, once it is done (waiting for
        it with ``wait``); its text becomes the next decode's context and prompt."""
        job = self._pending
        if job is None or not (job.done or wait):
            return []
        if not job.done:
            assert self.final_runner is not None
            self.final_runner.wait(job)
        self._pending = None
        if job.error is not None:
            raise job.error
        done = job.state
        self._context = done._context
        self._final_text = done._final_text
        self._last_t1 = done._last_t1
        self._finals = done._finals
        self.decodes += done.decodes
        return job.updates

    def begin_early_final(self, silence: float) -> FinalJob | None:
        """Start the final's decode before the endpoint, once ``silence`` seconds of the
        ``endpoint_silence`` have passed after speech (with a ``final_runner``, no final
        outstanding). If the endpoint then comes at the earliest moment (no speech frame
        and no weak speech delaying it), that decode *is* the final: the user gets it
        ``endpoint_silence - silence`` seconds sooner. Speech before the endpoint drops it
        (a wasted decode, withdrawn from the engine if it still waits there), and frames
        under the gate that average the speaker's weak speech start none."""
        if (
            self.final_runner is None
            or self._pending is not None
            or self._early is not None
            or not self._in_speech
            or not self._has_speech()
            or self._silence_run * self._frame < silence * SAMPLE_RATE
            or self._silence_run >= self._frames(self.config.endpoint_silence)
        ):
            return None
        # The decode hears ``silence`` seconds of the silence (whenever it is called: the
        # same audio however the stream arrived), then that silence again, as much as the
        # endpoint would add: tiny.en's words change with how much silence ends the audio
        # (0.25 s instead of 0.5 s cost 0.5-0.8 WER points on natural speech; the repeated
        # silence, 0.1). The first silent frame, which may hold a word's end, is not
        # repeated.
        onset = self._vad_pos - self._silence_run  # the first silent frame
        heard = min(self._silence_run, self._frames(silence))
        run = self._probs[onset : onset + heard]
        if float(np.mean(run)) >= self._weak_threshold():
            # Frames under the gate that average weak speech: a hoarse voice going on, not
            # yet the endpoint's silence (whose decode would hear that voice repeated as
            # silence: "So I'm going to do it. So" for "uh and", live).
            return None
        end = (onset + heard) * self._frame
        state = self._fork()
        missing = (self._frames(self.config.endpoint_silence) - heard) * self._frame
        quiet = self._buffer[end - min(missing, (heard - 1) * self._frame) : end]
        if missing > 0 and quiet.size:
            state._tail_silence = np.resize(quiet, missing)
        job = FinalJob(state=state, end=end)
        self._early = (job, self._speech_frames)
        self.final_runner.start(job)
        return job

    def _on_endpoint(self, end: int) -> list[AsrUpdate]:
        """An endpoint: decode the final here, or hand it to the ``final_runner``."""
        if self.final_runner is None:
            return self._endpoint(end)
        updates = self.settle()  # the previous final first: it is this one's context
        early = self._early
        if (
            early is not None
            and early[1] == self._speech_frames
            and self._endpoint_run == self._frames(self.config.endpoint_silence)
        ):
            self._early = None
            job = early[0]  # the endpoint came as soon as it could: nothing was said since
        else:
            self._drop_early()  # (weak speech delayed the endpoint: it decoded too little)
            job = FinalJob(state=self._fork(), end=end)
            self.final_runner.start(job)
        self._reset_utterance()
        self._since_decode = 0
        self._trim_after_endpoint(end)
        self._pending = job
        return updates

    def _drop_early(self) -> None:
        """Forget the early final, if any, and tell the runner (its decode, if it still
        waits for the model, is withdrawn): it will never be the final. Must come before
        the next final's job starts (the runner withdraws the stream's waiting final)."""
        if self._early is not None and self.final_runner is not None:
            self.final_runner.drop(self._early[0])
        self._early = None

    def _fork(self) -> StreamingPolicy:
        """A copy that a final's decode may change in another thread (its decodes counted
        from zero: whoever applies its result adds them)."""
        state = copy.copy(self)
        state._probs = list(self._probs)
        state._committed = list(self._committed)
        state._tentative = list(self._tentative)
        state._final_text = list(self._final_text)
        state.final_runner = None
        state._pending = None
        state._early = None
        state.decodes = 0
        return state

    def flush(self) -> list[AsrUpdate]:
        """End of stream: everything pending becomes finals; the policy is reset."""
        pending = self.settle()
        self._drop_early()  # the last utterance is made final here, inline
        rest = len(self._buffer) - len(self._probs) * self._frame
        if rest:
            pad = np.zeros(self._frame - rest, dtype=np.float32)
            probs = self._vad.speech_probs(np.concatenate([self._buffer[-rest:], pad]))
            self._probs += [float(p) for p in probs]
        updates: list[AsrUpdate] = pending
        while (end := self._advance_vad()) is not None:
            updates += self._endpoint(end)
        if self._has_speech():
            hyp = self._final_hypothesis(len(self._buffer))
            updates += self._finalize(hyp or self._committed)
        elif self._committed:
            updates += self._finalize(self._committed)
        self._context = None
        self._reset_utterance()
        self._epoch += 1
        self._buffer_start += len(self._buffer)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._probs = []
        self._vad_pos = 0
        self._since_decode = 0
        return updates

    # ------------------------------------------------------------------ VAD

    def _score_frames(self) -> None:
        """Score the new complete frames of the buffer with the VAD."""
        done = len(self._probs) * self._frame
        n = (len(self._buffer) - done) // self._frame
        if n > 0:
            probs = self._vad.speech_probs(self._buffer[done : done + n * self._frame])
            self._probs += [float(p) for p in probs]

    def _frames(self, seconds: float) -> int:
        return max(1, int(seconds * SAMPLE_RATE / self._frame + 0.5))

    def _advance_vad(self) -> int | None:
        """Run the endpoint detector over scored frames; the end sample of an endpoint.

        An endpoint needs ``endpoint_silence`` seconds of frames below the gate (after one
        below ``vad_neg_threshold``) that also look like silence on average: a weak or
        hoarse voice scores 0.1-0.3 on Silero for whole words ("this is the" of a speaker
        with a cold), silence and noise average far below ``weak_threshold``. A weak run
        longer than ``weak_max_silence`` ends the utterance anyway (babble, music).

        A fragment (:meth:`_short`: "My best qualities", "But she said.", "What else did
        then?") is held open until ``short_endpoint_silence``: tiny.en decodes two or three
        words alone badly ("Quite best qualities." for "my best qualities | if I have any"),
        and a speaker who pauses after three words usually goes on. If speech comes, the
        utterance continues; if not, its end is where the ordinary endpoint was, so the
        final decodes the same audio as before, only later (and its early final, if any,
        is still the final).
        """
        cfg = self.config
        need = self._frames(cfg.endpoint_silence)
        short_need = max(need, self._frames(cfg.short_endpoint_silence))
        cap = max(need, self._frames(cfg.weak_max_silence))
        while self._vad_pos < len(self._probs):
            p = self._probs[self._vad_pos]
            self._vad_pos += 1
            if p >= cfg.vad_threshold:
                if not self._in_speech:
                    self._anchor(self._vad_pos - 1)
                self._in_speech = True
                self._drop_early()  # speech again: the early final is of no use
                self._speech_frames += 1
                self._speech_sum += p
                self._silence_run = 0
                self._deferred = None
            elif self._in_speech and (p < cfg.vad_neg_threshold or self._silence_run):
                self._silence_run += 1
                window = self._probs[max(0, self._vad_pos - need) : self._vad_pos]
                quiet = float(np.mean(window)) < self._weak_threshold()
                if not quiet:
                    self._deferred = None  # weak speech: the held fragment goes on
                if self._silence_run >= cap:
                    self._endpoint_run = self._silence_run
                    return self._vad_pos * self._frame
                if self._silence_run >= need and quiet:
                    # (every endpoint resets the utterance, ``_deferred`` with it)
                    self._deferred = self._deferred or (self._vad_pos, self._silence_run)
                    if self._silence_run < short_need and self._short():
                        continue
                    end, self._endpoint_run = self._deferred
                    return end * self._frame
        return None

    def _anchor(self, onset: int) -> None:
        """An utterance begins at frame ``onset``: the buffer starts ``preroll`` seconds
        before it (before the weak speech leading into it, if any).

        Where the buffer starts is what the final decodes, and tiny.en's words change with
        the silence before the speech. Trimmed only by the periodic no-speech check, the
        buffer began 0.4-0.9 s before the onset depending on when audio arrived (40 ms
        frames live, 100 ms chunks in the replay): the same audio gave different finals.
        Anchored to the onset it depends on the audio alone."""
        weak = self._weak_tail(onset)
        self._trim_to_preroll((onset - weak) * self._frame)

    def _weak_tail(self, n: int) -> int:
        """Frames before frame ``n`` of the buffer that sound like weak speech: the longest
        run ending there (at most ``weak_keep`` seconds) whose every ``endpoint_silence``
        window averages at least the weak threshold. Silence and noise give 0."""
        cfg = self.config
        w = self._frames(cfg.endpoint_silence)
        if n < w or cfg.weak_keep <= 0:
            return 0
        probs = np.asarray(self._probs[max(0, n - self._frames(cfg.weak_keep) - w) : n])
        means = np.convolve(probs, np.ones(w) / w, mode="valid")  # means[i]: window i..i+w
        low = np.flatnonzero(means < self._weak_threshold())
        if not len(means) or (len(low) and low[-1] == len(means) - 1):
            return 0
        # After the last quiet window: the weak speech began at most a window before (the
        # pre-roll covers most of that). The onset of clear speech (a short tail that already
        # reached the gate) is left to the pre-roll: clear speech is buffered as before.
        start = low[-1] + w if len(low) else 0
        tail = len(probs) - int(start)
        if tail <= 0 or (2 * tail < w and max(probs[-tail:], default=0.0) >= cfg.vad_threshold):
            return 0
        return min(tail, self._frames(cfg.weak_keep))

    def _short(self) -> bool:
        """Whether the utterance so far is a fragment: at most ``short_words`` words heard
        (none when no partial ran) in under ``short_speech`` seconds of speech frames."""
        cfg = self.config
        return (
            cfg.short_words > 0
            and len(self._committed) + len(self._tentative) <= cfg.short_words
            and self._speech_frames * self._frame < cfg.short_speech * SAMPLE_RATE
        )

    def _has_speech(self) -> bool:
        return self._speech_frames * self._frame >= self.config.min_speech * SAMPLE_RATE

    def _speech_near(self, start: float, end: float) -> bool:
        """Whether the VAD heard speech within ``word_vad_pad`` of [start, end] (buffer s):
        a frame above the gate, or weak speech (a word of at least 0.1 s, widened to
        ``endpoint_silence``, averaging the weak threshold)."""
        pad = self.config.word_vad_pad
        lo = max(0, int((start - pad) * SAMPLE_RATE) // self._frame)
        hi = int((end + pad) * SAMPLE_RATE) // self._frame + 1
        if lo >= len(self._probs):
            # Past the scored frames: only the unscored tail of the buffer may hold speech.
            return lo * self._frame < len(self._buffer)
        if any(p >= self.config.vad_threshold for p in self._probs[lo:hi]):
            return True
        if end - start < 0.1:
            return False  # squeezed into no time: stacked, not heard (a re-emitted phrase)
        half = max(0.0, self.config.endpoint_silence - (end - start)) / 2
        return self._weak_speech([Word(text="", start=start - half, end=end + half)])

    def _hallucinated(self, words: Sequence[Word]) -> bool:
        """Words (buffer times) that look invented: hallucination-shaped (anomalous) or a
        stock sign-off, over audio the VAD calls mostly silence -- or both shapes at once
        ("Thank you very much." squeezed onto the buffer's last instant after speech)."""
        anomalous, stock = is_anomalous(words), is_stock_phrase(words)
        spoken = [w for w in words if normalize_word(w.text)]
        if (anomalous and stock) or (
            len(spoken) >= 4 and all(w.end - w.start < 0.05 for w in spoken)
        ):
            # Four or more words all squeezed into no time are never speech, wherever they
            # lie: a context decode re-emitted the whole previous final stacked on 20 ms.
            return True
        if not self._mostly_silent(words):
            return False
        # Low-probability words over weak speech (a hoarse voice Silero scores 0.1-0.3) are
        # heard, not invented, and so are a squeezed word or two among them ("Alright, so
        # this is the sick corpus. Hopefully ..." with "so" and "Hopefully" squeezed was
        # dropped whole: 14 words of a live run); a stock sign-off, or words squeezed into
        # no time or stretched on average (a sentence stacked on one instant), over the
        # same audio are still dropped.
        if stock or not anomalous:
            return stock
        return is_stacked(words) or not self._weak_speech(words)

    def _weak_speech(self, words: Sequence[Word]) -> bool:
        """Whether the span of ``words`` averages at least ``weak_threshold``."""
        lo, hi = self._span(words)
        return hi > lo and float(np.mean(self._probs[lo:hi])) >= self._weak_threshold()

    def _weak_threshold(self) -> float:
        """The mean speech probability that weak speech reaches: ``weak_threshold``, or
        ``weak_ratio`` of the speaker's level (the mean score of the clear frames of the
        current utterance, else of the previous one). A breath between two sentences of a
        clear voice (0.15 against 0.95) is silence; a hoarse voice at 0.15 against 0.45 is
        not. A voice whose clear frames average ``weak_voice_level`` or more has no weak
        speech (infinite threshold): the policy treats it exactly as a gate-only policy."""
        level = self._speech_sum / self._speech_frames if self._speech_frames else self._level
        if level >= self.config.weak_voice_level:
            return float("inf")  # a clear voice: its 0.1-0.3 frames are breaths and decay
        return max(self.config.weak_threshold, self.config.weak_ratio * level)

    def _span(self, words: Sequence[Word]) -> tuple[int, int]:
        start, end = words[0].start, max(words[-1].end, words[0].start + 0.2)
        lo = max(0, int(start * SAMPLE_RATE) // self._frame)
        return lo, min(len(self._probs), int(end * SAMPLE_RATE) // self._frame + 1)

    def _speech_in(self, lo: int, hi: int) -> float:
        """Seconds of frames ``lo:hi`` of the buffer at or above the VAD gate."""
        frames = sum(p >= self.config.vad_threshold for p in self._probs[lo:hi])
        return frames * self._frame / SAMPLE_RATE

    def _mostly_silent(self, words: Sequence[Word]) -> bool:
        """Whether the VAD heard speech in less than half of the span of ``words``."""
        lo, hi = self._span(words)
        if hi <= lo:
            return False
        return self._speech_in(lo, hi) < 0.5 * (hi - lo) * self._frame / SAMPLE_RATE

    # ------------------------------------------------------------------ decoding

    def _prompt(self, without: str = "") -> str:
        text = " ".join(self._final_text)
        if without and text.endswith(without):
            text = text[: -len(without)].rstrip()
        return text[-self.config.prompt_chars :].lstrip() if self.config.prompt_chars else ""

    def _usable_context(self) -> _Context | None:
        """The last final's context when it ends right before the buffer (at most
        ``context_gap`` seconds of trimmed silence between), cut where the buffer starts."""
        ctx = self._context
        if ctx is None or self._buffer_start - ctx.end > self.config.context_gap * SAMPLE_RATE:
            return None
        keep = min(len(ctx.audio), self._buffer_start - ctx.start)
        if keep < SAMPLE_RATE // 4:
            return None
        return attrs.evolve(ctx, audio=ctx.audio[:keep], end=ctx.start + keep)

    def _keep_context(self, words: Sequence[Word], end: int) -> None:
        """Remember the audio and text of the last words of a final (up to
        ``context_seconds`` before ``end``, a buffer sample) for the next final decode."""
        self._context = None
        cfg = self.config
        if cfg.context_seconds <= 0 or not words:
            return
        end_abs = self._buffer_start + end
        limit = end_abs / SAMPLE_RATE - cfg.context_seconds
        first = next((i for i, w in enumerate(words) if w.start >= limit), None)
        if first is None:
            return
        start = words[first].start - 0.2
        if first > 0:
            start = max(start, (words[first - 1].end + words[first].start) / 2)
        start_abs = max(self._buffer_start, int(start * SAMPLE_RATE))
        text = _text(words[first:])
        if not text or start_abs >= end_abs:
            return
        audio = self._buffer[start_abs - self._buffer_start : end].copy()
        self._context = _Context(audio=audio, start=start_abs, end=end_abs, text=text)

    def _final_hypothesis(self, end: int) -> list[Word]:
        """The decode that makes ``buffer[:end]`` final, with a retry when it is truncated.

        tiny.en sometimes ends a hypothesis early and stretches its last word over the rest
        of the speech ("allowed to[8.4-15.2 s]", the next 7 s of speech lost). A word longer
        than ``max_word_seconds`` over audio the VAD calls speech marks such a truncated
        decode, and so does a hypothesis with clearly fewer words than the partial decodes
        of the same utterance heard (under 3/4 of them: "... for those who come to", the
        next 20 words lost). The buffer is then decoded again greedily without the context
        and the longer result kept. (Never the partials' words themselves: a partial of the
        pre-roll after a final can be the prompt said again.)
        """
        context = self._usable_context()
        until = (self._buffer_start + end) / SAMPLE_RATE
        heard = [w for w in self._committed + self._tentative if w.start < until]
        hyp = self._hypothesis(end, final=True, context=context)
        if context is not None and (
            self._echo or _shares_phrase(hyp, context.text) or self._sparse(hyp, end)
        ):
            # The decoder went back over the context and said it again ("... the original
            # one." then "And I'm saying a bunch of different words" once more): the
            # utterance is decoded alone instead.
            hyp = self._hypothesis(end, final=True)
        if self._truncated(hyp) or self._shorter(hyp, heard):
            retry = self._hypothesis(end, beam_size=1)
            hyp = retry if len(retry) > len(hyp) else hyp
        return self._resume_skip(hyp, end)

    def _resume_skip(self, words: list[Word], end: int) -> list[Word]:
        """``words`` of ``buffer[:end]``, with speech the decode skipped decoded again.

        tiny.en sometimes jumps over seconds of speech inside one segment ("The ache of his
        overstrained eyes, even[21.6 s]": the 8 s between, 16 words, never decoded). A gap
        between two words that holds at least ``max_word_seconds`` of speech frames is
        decoded again on its own, from the word before it to ``end``, with the words before
        it as the prompt; the longer result is kept.
        """
        cfg = self.config
        offset = self._buffer_start / SAMPLE_RATE
        for i in range(1, len(words)):
            gap = words[i].start - words[i - 1].end
            if gap <= cfg.max_word_seconds:
                continue
            lo = max(0, int((words[i - 1].end - offset) * SAMPLE_RATE) // self._frame)
            hi = int((words[i].start - offset) * SAMPLE_RATE) // self._frame
            if self._speech_in(lo, hi) < cfg.max_word_seconds:
                continue
            before = words[:i]
            rest = self._hypothesis(end, final=True, start=min(lo * self._frame, end), said=before)
            resumed = break_repetitions(before + rest, cfg.max_repeats, cfg.repeat_phrase_words)
            return resumed if len(resumed) > len(words) else words
        return words

    def _sparse(self, words: Sequence[Word], end: int) -> bool:
        """Whether a final hypothesis of ``buffer[:end]`` has under one word per second of
        the clear speech in it (at least 1.5 s of it): a decode forced to the context that
        ended right after it (tiny.en saying nothing more over 4 s of speech)."""
        speech = self._speech_in(0, end // self._frame)
        return speech >= 1.5 and len(words) < speech

    @staticmethod
    def _shorter(words: Sequence[Word], heard: Sequence[Word]) -> bool:
        """Whether a final hypothesis clearly lost words the partials heard (under 3/4 of
        them, and at least 4)."""
        return len(words) < 0.75 * len(heard) and len(heard) - len(words) >= 4

    def _truncated(self, words: Sequence[Word]) -> bool:
        offset = self._buffer_start / SAMPLE_RATE
        return any(
            w.end - w.start > self.config.max_word_seconds
            and not self._mostly_silent(
                [attrs.evolve(w, start=w.start - offset, end=w.end - offset)]
            )
            for w in words
        )

    def _hypothesis(
        self,
        end: int,
        *,
        final: bool = False,
        beam_size: int | None = None,
        context: _Context | None = None,
        start: int = 0,
        said: Sequence[Word] = (),
    ) -> list[Word]:
        """Decode ``buffer[:end]``; guarded words with absolute times.

        The decode that makes an utterance final uses ``final_beam_size`` (once per
        utterance: a wider beam costs little and cut tiny.en's WER in half on the benchmark).
        With a ``context`` (the end of the previous final) the decoder hears that audio
        first, forced to its known text, so an utterance cut at a short pause is decoded
        with what was said just before it, as offline decoding would. With ``said`` (the
        words before ``start``) only ``buffer[start:end]`` is decoded, those words ending
        the prompt (:meth:`_resume_skip`).
        """
        cfg = self.config
        self.decodes += 1
        beam = max(cfg.beam_size, cfg.final_beam_size) if final else cfg.beam_size
        if beam_size is not None:
            beam = beam_size
        audio = self._buffer[start:end]
        if self._tail_silence is not None:
            audio = np.concatenate([audio, self._tail_silence])
        if said:  # the words before ``start`` (see _resume_skip)
            prompt = f"{self._prompt()} {_text(said)}".strip()
            segments = self._decoder.decode(
                audio, prompt=prompt[-cfg.prompt_chars :], beam_size=beam
            )
            return self._guarded([_shifted(seg, start / SAMPLE_RATE) for seg in segments])
        if context is None:
            segments = self._decoder.decode(audio, prompt=self._prompt(), beam_size=beam)
        else:
            segments = self._decoder.decode(
                np.concatenate([context.audio, audio]),
                prompt=self._prompt(without=context.text),
                beam_size=beam,
                prefix=context.text,
            )
        return self._guarded(segments, context)

    def _guarded(
        self, segments: Sequence[DecodedSegment], context: _Context | None = None
    ) -> list[Word]:
        """The words of a decode of the buffer (after ``context``'s audio, if any) that pass
        the guards, with absolute times."""
        cfg = self.config
        shift = 0.0
        if context is not None:
            shift = len(context.audio) / SAMPLE_RATE
            segments = [_shifted(seg, -shift) for seg in segments]
        offset = self._buffer_start / SAMPLE_RATE
        words: list[Word] = []
        for seg in segments:
            if seg.compression_ratio > cfg.max_compression_ratio:
                continue
            if seg.avg_logprob < cfg.min_avg_logprob:
                continue
            if (
                seg.no_speech_prob > cfg.no_speech_threshold
                and seg.avg_logprob < cfg.logprob_threshold
            ):
                continue
            if self._hallucinated(seg.words):
                continue
            for w in seg.words:
                if not normalize_word(w.text) or not self._speech_near(w.start, w.end):
                    continue
                if shift and w.end <= 0.05:
                    continue  # a word of the context said again
                start = max(offset + w.start, words[-1].end if words else 0.0)
                words.append(attrs.evolve(w, start=start, end=max(offset + w.end, start)))
        words = self._drop_stock_tail(words)
        self._echo = False
        if context is None:
            return break_repetitions(words, cfg.max_repeats, cfg.repeat_phrase_words)
        if _echoes(words, context.text, cfg.repeat_phrase_words):
            # The new words begin with the context's last phrase: the decoder said it again,
            # or the speaker repeated it after the pause ("alpha bravo charlie" twice).
            # Either way the utterance is decoded alone (see _final_hypothesis), never cut
            # to nothing as a repeat of the context.
            self._echo = True
            return break_repetitions(words, cfg.max_repeats, cfg.repeat_phrase_words)
        # A repeat may start in the context: "... lower in intensity. We're" + "just saying
        # some words. We're just saying some words." The context's last words go first
        # (marked by their time) and only the new words are kept.
        marked = [
            Word(text=f" {t}", start=_CONTEXT_MARK, end=_CONTEXT_MARK)
            for t in context.text.split()[-12:]
        ]
        kept = break_repetitions(marked + words, cfg.max_repeats, cfg.repeat_phrase_words)
        return [w for w in kept if w.start != _CONTEXT_MARK]

    def _drop_stock_tail(self, words: list[Word]) -> list[Word]:
        """Without a trailing stock sign-off ("... a crayfish. Thank you very much.") that the
        decoder put in the same segment as the speech but where the VAD heard no speech."""
        offset = self._buffer_start / SAMPLE_RATE
        for n in range(min(5, len(words) - 1), 0, -1):
            tail = words[-n:]
            shifted = [attrs.evolve(w, start=w.start - offset, end=w.end - offset) for w in tail]
            if is_stock_phrase(tail) and self._hallucinated(shifted):
                return words[:-n]
        return words

    def _merge_tail(self, hyp: list[Word]) -> list[Word]:
        """The part of ``hyp`` after the committed words."""
        if not self._committed:
            return hyp
        last_end = self._committed[-1].end
        tail = [w for w in hyp if w.start >= last_end - 0.1]
        # Drop a re-decoded copy of the last committed words at the seam (1-5 grams).
        # Only words starting before the committed end are candidates: "no, no" is speech.
        committed = [normalize_word(w.text) for w in self._committed]
        for n in range(min(5, len(committed), len(tail)), 0, -1):
            if tail[n - 1].start < last_end + 0.05 and committed[-n:] == [
                normalize_word(w.text) for w in tail[:n]
            ]:
                return tail[n:]
        return tail

    def _decode_step(self, hyp: list[Word], *, limit: bool = False) -> list[AsrUpdate]:
        """LocalAgreement over ``hyp``, the partial, and the buffer limit's final: cut from
        ``hyp`` when it is the final-quality decode of a ``limit`` job, else (a partial
        decode that found the buffer full) from the committed words."""
        tail = self._merge_tail(hyp)
        n = _common_prefix(self._tentative, tail)
        self._committed += tail[:n]
        self._tentative = tail[n:]
        updates: list[AsrUpdate] = []
        if limit:
            updates += self._buffer_limit(hyp)
        elif self.buffer_seconds >= self.config.max_buffer:
            updates += self._buffer_limit()
        updates += self._partial()
        return updates

    def _limit_cut(self, hyp: Sequence[Word]) -> int:
        """How many words of ``hyp`` (a final-quality decode of the full buffer) the buffer
        limit's final takes: those ending by the last committed word (what two decodes
        agreed on; without one, all but the last second), back to the last sentence end
        among them when that keeps at least ``max_buffer / 3`` seconds (the rest is decoded
        again with what follows it, not cut mid-sentence)."""
        end = (self._buffer_start + len(self._buffer)) / SAMPLE_RATE
        agreed = self._committed[-1].end if self._committed else end - 1.0
        n = 0
        while n < len(hyp) and hyp[n].end <= agreed + 0.05:
            n += 1
        floor = self._buffer_start / SAMPLE_RATE + self.config.max_buffer / 3
        for i in range(n, 0, -1):
            if hyp[i - 1].end < floor:
                break
            if hyp[i - 1].text.rstrip().endswith((".", "?", "!")):
                return i
        return n

    def _buffer_limit(self, hyp: Sequence[Word] | None = None) -> list[AsrUpdate]:
        """The buffer limit's final; trim the buffer to the end of its last word.

        With ``hyp``, a final-quality decode of the buffer (see :meth:`_limit_cut`): greedy
        partials agree on words that beam search with context gets right ("The Pacific
        crayfish however serves every purpose" came out of two agreeing partials as "The
        Pacific The Pacific many contend"). Without it (or when it has no word before the
        cut), the committed words."""
        n = self._limit_cut(hyp) if hyp else 0
        end: float | None = None  # the cut, in seconds
        if hyp and n:
            words, self._tentative = list(hyp[:n]), list(hyp[n:])
            end = words[-1].end
            if self._tentative and self._tentative[0].start > end:
                # halfway into the gap before the next word (at most 0.2 s past this one)
                end = min((end + self._tentative[0].start) / 2, end + 0.2)
        else:
            words = self._committed or self._tentative
            if not words:
                self._trim_to_preroll(len(self._buffer))
                return []
            if not self._committed:
                self._tentative = []
        self._committed = []
        updates = self._finalize(words)
        cut = int((words[-1].end if end is None else end) * SAMPLE_RATE) - self._buffer_start
        self._keep_context(words if updates else [], max(0, min(cut, len(self._buffer))))
        self._drop(cut)
        self._last_partial = ""
        return updates

    def _endpoint(self, end: int) -> list[AsrUpdate]:
        """End of an utterance at ``end`` (buffer sample): finalize all of it, trim."""
        updates: list[AsrUpdate] = []
        words: list[Word] = []
        if self._has_speech():
            words = self._final_hypothesis(end) or self._committed
        elif self._committed:
            words = self._committed
        updates += self._finalize(words)
        self._keep_context(words if updates else [], end)
        self._reset_utterance()
        self._since_decode = 0
        self._trim_after_endpoint(end)
        return updates

    # ------------------------------------------------------------------ emitting

    def _partial(self) -> list[AsrUpdate]:
        words = self._committed + self._tentative
        text = _text(words)
        if not self.config.emit_partials or not text or text == self._last_partial:
            return []
        self._last_partial = text
        t0 = max(words[0].start, self._last_t1)
        return [AsrPartialUpdate(text=text, t0=t0, t1=max(words[-1].end, t0))]

    def _finalize(self, words: list[Word]) -> list[AsrUpdate]:
        self._last_partial = ""
        text = _text(words)
        if not text:
            return []
        cfg = self.config
        confidence = float(np.mean([w.probability for w in words]))
        speech = self._speech_frames * self._frame / SAMPLE_RATE
        if normalize_word(text) in HALLUCINATION_BLOCKLIST and (
            speech < cfg.blocklist_max_speech or confidence < cfg.blocklist_min_confidence
        ):
            return []
        t0 = max(words[0].start, self._last_t1)
        t1 = max(words[-1].end, t0)
        self._last_t1 = t1
        self._final_text.append(text)
        if len(self._final_text) > 20:
            del self._final_text[:-20]
        digest = hashlib.sha1(f"{text}|{t0:.2f}|{t1:.2f}".encode()).hexdigest()[:10]
        segment_id = f"{cfg.id_prefix}{self._finals:05d}-{digest}"
        self._finals += 1
        return [
            AsrFinalUpdate(
                text=text,
                t0=round(t0, 3),
                t1=round(t1, 3),
                confidence=round(confidence, 4),
                segment_id=segment_id,
            )
        ]

    # ------------------------------------------------------------------ buffer

    def _reset_utterance(self) -> None:
        self._epoch += 1
        self._heard = False
        self._early = None
        if self._speech_frames:
            self._level = self._speech_sum / self._speech_frames
        self._speech_sum = 0.0
        self._committed = []
        self._tentative = []
        self._in_speech = False
        self._speech_frames = 0
        self._silence_run = 0
        self._deferred = None
        self._last_partial = ""

    def _trim_to_preroll(self, end: int) -> None:
        """Drop the buffer before ``end`` except the last ``preroll`` seconds."""
        self._drop(end - int(self.config.preroll * SAMPLE_RATE))

    def _trim_after_endpoint(self, end: int) -> None:
        """Drop the utterance that ended at ``end`` (buffer sample): keep the last
        ``preroll`` seconds of the endpoint's silence, never the speech before it (with a
        pre-roll longer than that silence the next final would decode the last word's end
        again; the context of the next final has it)."""
        quiet = max(0, self._endpoint_run - 1) * self._frame  # (its first frame: a word's end)
        self._drop(end - min(int(self.config.preroll * SAMPLE_RATE), quiet))

    def _drop(self, samples: int) -> None:
        """Drop ``samples`` (rounded down to whole frames) from the start of the buffer."""
        frames = min(max(samples, 0) // self._frame, len(self._probs))
        if frames <= 0:
            return
        cut = frames * self._frame
        self._epoch += 1
        self._buffer = self._buffer[cut:].copy()
        self._buffer_start += cut
        del self._probs[:frames]
        self._vad_pos = max(0, self._vad_pos - frames)
