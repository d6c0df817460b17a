"""The decode engine's scheduling rules: which waiting decode requests run next, together.

Theory of operation
-------------------
The scheduler is a plain object: it is *fed* decode requests (:meth:`DecodeScheduler.submit`)
and asked, with the current time, for the next batch (:meth:`DecodeScheduler.next_batch`).
It owns no thread and reads no clock, so its rules are tested by driving time as numbers.

* **Urgency.** Every waiting request is in one of two tiers. Tier 0: finals (the decode that
  makes an utterance final: a person is waiting for it) and partials that have waited
  ``starve_after`` seconds (so no partial starves behind a stream of finals). Tier 1: the other
  partials. Tier 0 runs first, oldest submission first; tier 1 runs stalest first: the
  request whose stream has shown its last partial longest ago (``stale_since``). A batch is
  made of one tier only, so a final never waits behind a partial's decode; and the executor
  asks for tier-0 batches (``urgent_only``) between the steps of a round of partials.
* **Compatibility.** Requests decoded together must share their ``group`` (an opaque key the
  executor derives from the decode options that a batched model call shares: beam size,
  language, ...). Requests of another group wait for a later batch.
* **Length.** A batch is padded to its longest member (``frames``: encoder input frames), so
  members are chosen by length: starting from the most urgent request (the leader), the
  next most urgent compatible requests join while the batch's length span stays within
  ``max_pad_frames`` and its padded size (members x longest) within ``max_batch_frames``;
  at most ``max_batch`` members. The leader always runs, even alone and over the limits.
* **Work conserving.** A batch is returned whenever anything waits; there is no lingering.
  Under load requests accumulate while a batch runs, so batches grow by themselves, and each
  stream's partial cadence stretches (its next partial decode waits for its turn, stalest
  first) before any stream's final is delayed.
* **Joining.** A final that comes due while a batch of finals has not reached its decoder
  step joins it (:meth:`DecodeScheduler.joiners`: same group, no longer than the batch's
  padded window, within the batch limits), so finals that come due together share one
  decoder call instead of waiting a whole round each.
* **Lingering a little.** Work conserving alone keeps streams out of phase: while one
  stream's decode runs the next one's request arrives and runs alone after it, and so on.
  So right after a round (:meth:`DecodeScheduler.round_done`), when only partials wait and
  fewer streams wait than were active in the last ``active_window`` seconds, the scheduler
  holds them up to ``linger`` seconds (:attr:`DecodeScheduler.deadline`) for the streams
  just served to submit again; once in phase they stay in phase. Finals never linger.
* **Stretching partials first.** :func:`partial_stretch` turns the engine's busy fraction
  into a factor on every stream's partial decode interval: past ``start`` busy the streams
  decode partials less often (up to ``max_stretch`` times the interval at ``full``), so a
  loaded engine sheds partial work itself, finals untouched, before the backlog grows and the
  server's degrade ladder acts.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import attrs

__all__ = ["Batch", "DecodeRequest", "DecodeScheduler", "SchedulerConfig", "partial_stretch"]


@attrs.frozen(kw_only=True)
class DecodeRequest:
    """One decode waiting for the model.

    ``stream`` names the requesting stream (at most one request per stream is expected to
    wait, but the scheduler does not rely on it); ``final`` marks the decode that makes an
    utterance final; ``frames`` is the encoder input length (mel frames) the request needs;
    ``group`` the compatibility key; ``submitted`` the time it was submitted;
    ``stale_since`` the time the stream's shown partial was last refreshed (defaults to
    ``submitted``).
    """

    id: int
    stream: str
    final: bool
    frames: int = attrs.field(validator=attrs.validators.gt(0))
    group: Hashable = None
    submitted: float = 0.0
    stale_since: float | None = None

    @property
    def staleness_origin(self) -> float:
        return self.submitted if self.stale_since is None else min(self.stale_since, self.submitted)


@attrs.frozen(kw_only=True)
class SchedulerConfig:
    """Limits of one batch and the starvation bound."""

    max_batch: int = attrs.field(default=8, validator=attrs.validators.ge(1))
    #: members x longest member's frames (3000 frames = one 30 s Whisper window).
    max_batch_frames: int = attrs.field(default=8 * 3000, validator=attrs.validators.ge(1))
    #: longest - shortest member of one batch (500 frames = 5 s of audio).
    max_pad_frames: int = attrs.field(default=500, validator=attrs.validators.ge(0))
    #: a partial waiting this long is served with the finals' urgency.
    starve_after: float = attrs.field(default=3.0, validator=attrs.validators.gt(0))
    #: after a round, partials wait up to this long for the streams just served to submit
    #: again (audio arrives in frames of up to 100 ms, so streams drift that much).
    linger: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))
    #: streams that submitted within this many seconds count as active (for ``linger``).
    active_window: float = attrs.field(default=2.0, validator=attrs.validators.gt(0))


@attrs.frozen(kw_only=True)
class Batch:
    """Requests decoded together, most urgent first; ``frames`` is the padded length."""

    requests: tuple[DecodeRequest, ...]
    frames: int
    urgent: bool

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(r.id for r in self.requests)


class DecodeScheduler:
    """Waiting decode requests and the rule that picks the next batch (see module doc)."""

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config if config is not None else SchedulerConfig()
        self._waiting: dict[int, tuple[int, DecodeRequest]] = {}
        self._seq = 0
        self._active: dict[str, float] = {}  # stream -> its last submission
        self._idle_since: float | None = None  # end of the last round, while lingering

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def waiting(self) -> tuple[DecodeRequest, ...]:
        """The waiting requests in submission order."""
        return tuple(r for _, r in sorted(self._waiting.values(), key=lambda x: x[0]))

    def submit(self, request: DecodeRequest) -> None:
        """Queue ``request``; a request id may wait only once."""
        if request.id in self._waiting:
            raise ValueError(f"decode request {request.id} is already waiting")
        self._waiting[request.id] = (self._seq, request)
        self._seq += 1
        self._active[request.stream] = max(
            request.submitted, self._active.get(request.stream, request.submitted)
        )

    def round_done(self, now: float) -> None:
        """The executor finished a round at ``now`` (the linger window starts)."""
        self._idle_since = now
        cutoff = now - self.config.active_window
        self._active = {k: t for k, t in self._active.items() if t >= cutoff}

    @property
    def deadline(self) -> float | None:
        """When a lingering scheduler gives its batch anyway (None: not lingering)."""
        if self._idle_since is None or not self._waiting:
            return None
        return self._idle_since + self.config.linger

    def _lingers(self, leader: DecodeRequest, now: float) -> bool:
        if self._idle_since is None or self.urgent(leader, now):
            return False
        if now >= self._idle_since + self.config.linger:
            return False
        cutoff = now - self.config.active_window
        active = sum(1 for t in self._active.values() if t >= cutoff)
        waiting = len({r.stream for _, r in self._waiting.values()})
        return waiting < active

    def cancel(self, request_id: int) -> bool:
        """Forget a waiting request (its caller gave up); False when it was not waiting."""
        return self._waiting.pop(request_id, None) is not None

    def urgent(self, request: DecodeRequest, now: float) -> bool:
        """Tier 0: a final, or a partial that has waited ``starve_after`` seconds."""
        return request.final or now - request.submitted >= self.config.starve_after

    def _key(self, seq: int, request: DecodeRequest, now: float) -> tuple[int, float, int]:
        if self.urgent(request, now):
            return (0, request.submitted, seq)
        return (1, request.staleness_origin, seq)

    def ordered(self, now: float) -> list[DecodeRequest]:
        """Waiting requests, most urgent first."""
        items = sorted(self._waiting.values(), key=lambda x: self._key(x[0], x[1], now))
        return [r for _, r in items]

    def next_batch(self, now: float, *, urgent_only: bool = False) -> Batch | None:
        """Remove and return the next batch to decode; None when nothing waits or while
        lingering (ask again at :attr:`deadline` or when a request arrives).

        ``urgent_only`` returns a batch only when the most urgent request is in tier 0 (the
        executor asks so between the steps of a round of partials, to let finals in).
        """
        order = self.ordered(now)
        if not order:
            return None
        leader = order[0]
        tier = self.urgent(leader, now)
        if urgent_only and not tier:
            return None
        if self._lingers(leader, now):
            return None
        self._idle_since = None
        members = [leader]
        lo = hi = leader.frames
        cfg = self.config
        for req in order[1:]:
            if len(members) >= cfg.max_batch:
                break
            if self.urgent(req, now) != tier or req.group != leader.group:
                continue
            new_lo, new_hi = min(lo, req.frames), max(hi, req.frames)
            if new_hi - new_lo > cfg.max_pad_frames:
                continue
            if (len(members) + 1) * new_hi > cfg.max_batch_frames:
                continue
            members.append(req)
            lo, hi = new_lo, new_hi
        for req in members:
            del self._waiting[req.id]
        return Batch(requests=tuple(members), frames=hi, urgent=tier)

    def joiners(self, running: Batch, now: float) -> Batch | None:
        """Remove and return the urgent requests that join ``running``, an urgent batch
        whose decoder step has not run yet; None when none can.

        Finals of several streams often come due a few tens of milliseconds apart (a
        meeting's speakers pause together, or a client sends in bursts): the later ones join
        the batch in progress and share its decoder call instead of waiting for the whole
        round. A joiner is urgent, in ``running``'s group, no longer than its padded window
        (and within ``max_pad_frames`` of it), and the batch stays within ``max_batch`` and
        ``max_batch_frames``; its ``frames`` is ``running.frames``.
        """
        if not running.urgent or not running.requests:
            return None
        cfg = self.config
        group = running.requests[0].group
        count = len(running.requests)
        members: list[DecodeRequest] = []
        for req in self.ordered(now):
            if count + len(members) >= cfg.max_batch:
                break
            if not self.urgent(req, now):
                break  # the rest are partials
            if req.group != group or req.frames > running.frames:
                continue
            if running.frames - req.frames > cfg.max_pad_frames:
                continue
            if (count + len(members) + 1) * running.frames > cfg.max_batch_frames:
                break
            members.append(req)
        if not members:
            return None
        for req in members:
            del self._waiting[req.id]
        return Batch(requests=tuple(members), frames=running.frames, urgent=True)

    def extend(self, requests: Iterable[DecodeRequest]) -> None:
        """Submit several requests in order."""
        for request in requests:
            self.submit(request)


def partial_stretch(
    busy: float, *, start: float = 0.6, full: float = 0.95, max_stretch: float = 3.0
) -> float:
    """Factor on the partial decode interval for an engine ``busy`` (0..1) of the time."""
    if busy <= start:
        return 1.0
    x = min(1.0, (busy - start) / (full - start))
    return 1.0 + x * (max_stretch - 1.0)
