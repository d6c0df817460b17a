"""The decode scheduler's rules, driven by numbers (no threads, no clock)."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echopanel.asr.engine.scheduler import (
    Batch,
    DecodeRequest,
    DecodeScheduler,
    SchedulerConfig,
    partial_stretch,
)


def req(
    i: int, *, final: bool = False, frames: int = 1000, at: float = 0.0, **kw: object
) -> DecodeRequest:
    return DecodeRequest(id=i, stream=f"s{i}", final=final, frames=frames, submitted=at, **kw)  # type: ignore[arg-type]


def test_finals_run_before_partials_even_when_later() -> None:
    s = DecodeScheduler()
    s.submit(req(1, at=0.0))
    s.submit(req(2, at=0.1))
    s.submit(req(3, final=True, at=0.5))
    batch = s.next_batch(0.6)
    assert batch is not None and batch.ids == (3,) and batch.urgent
    batch = s.next_batch(0.7)
    assert batch is not None and batch.ids == (1, 2) and not batch.urgent
    assert s.next_batch(0.8) is None


def test_stalest_partial_first() -> None:
    s = DecodeScheduler(SchedulerConfig(max_batch=1))
    s.submit(req(1, at=1.0, stale_since=0.9))  # shown a partial recently
    s.submit(req(2, at=1.1, stale_since=0.2))  # its partial is old
    first = s.next_batch(1.2)
    assert first is not None and first.ids == (2,)


def test_partial_waiting_too_long_is_served_with_finals() -> None:
    s = DecodeScheduler(SchedulerConfig(starve_after=2.0))
    s.submit(req(1, at=0.0))
    s.submit(req(2, final=True, at=1.0))
    batch = s.next_batch(2.5)  # the partial has waited 2.5 s: urgent, and older
    assert batch is not None and batch.ids[0] == 1 and batch.urgent


def test_groups_and_lengths_split_batches() -> None:
    s = DecodeScheduler(SchedulerConfig(max_pad_frames=200))
    s.submit(req(1, frames=1000, group="beam1"))
    s.submit(req(2, frames=1100, group="beam1"))
    s.submit(req(3, frames=1500, group="beam1"))  # too long next to 1000
    s.submit(req(4, frames=1000, group="beam5"))  # other decode options
    batch = s.next_batch(0.0)
    assert batch is not None and batch.ids == (1, 2) and batch.frames == 1100
    assert {r.id for r in s.waiting} == {3, 4}


def test_leader_runs_alone_over_the_limits() -> None:
    s = DecodeScheduler(SchedulerConfig(max_batch=2, max_batch_frames=1000))
    s.submit(req(1, frames=3000))
    s.submit(req(2, frames=3000))
    batch = s.next_batch(0.0)
    assert batch is not None and batch.ids == (1,)


def test_submit_twice_and_cancel() -> None:
    s = DecodeScheduler()
    s.submit(req(1))
    with pytest.raises(ValueError, match="already waiting"):
        s.submit(req(1))
    assert s.cancel(1) and not s.cancel(1)
    assert s.next_batch(0.0) is None


# ---------------------------------------------------------------------- properties

configs = st.builds(
    SchedulerConfig,
    max_batch=st.integers(1, 8),
    max_batch_frames=st.integers(1000, 24000),
    max_pad_frames=st.integers(0, 1500),
    starve_after=st.floats(0.5, 5.0),
    linger=st.floats(0.0, 0.1),
)
arrivals = st.lists(
    st.tuples(
        st.floats(0.0, 0.5),  # gap since the previous arrival
        st.booleans(),  # final
        st.integers(100, 3000),  # frames
        st.sampled_from(["g1", "g1", "g5"]),  # group
        st.floats(0.0, 3.0),  # staleness of the stream's partial at submission
    ),
    max_size=40,
)


def _check_batch(
    s: DecodeScheduler, batch: Batch, waiting: list[DecodeRequest], now: float
) -> None:
    cfg = s.config
    members = batch.requests
    assert 1 <= len(members) <= cfg.max_batch
    assert batch.frames == max(r.frames for r in members)
    if len(members) > 1:
        assert batch.frames - min(r.frames for r in members) <= cfg.max_pad_frames
        assert len(members) * batch.frames <= cfg.max_batch_frames
    assert len({r.group for r in members}) == 1
    assert len({s.urgent(r, now) for r in members}) == 1
    # Finals never wait behind partials: a batch of (not yet starving) partials runs
    # only when no final waits.
    if not batch.urgent:
        assert not any(r.final for r in waiting)
    ids = {r.id for r in members}
    assert ids <= {r.id for r in waiting}


@settings(max_examples=200, deadline=None)
@given(config=configs, events=arrivals, cost=st.floats(0.01, 0.5))
def test_simulated_load_respects_limits_urgency_and_never_starves(
    config: SchedulerConfig, events: list[tuple[float, bool, int, str, float]], cost: float
) -> None:
    """Arrivals over time; the engine takes ``cost`` seconds per batch whenever idle."""
    s = DecodeScheduler(config)
    now = 0.0
    busy_until = 0.0
    served: dict[int, float] = {}
    requests: dict[int, DecodeRequest] = {}
    arrival_time = 0.0
    timeline: list[tuple[float, DecodeRequest]] = []
    for i, (gap, final, frames, group, stale) in enumerate(events):
        arrival_time += gap
        r = DecodeRequest(
            id=i,
            stream=f"s{i % 5}",
            final=final,
            frames=frames,
            group=group,
            submitted=arrival_time,
            stale_since=arrival_time - stale,
        )
        timeline.append((arrival_time, r))
        requests[i] = r
    steps = 0
    running = False

    def arrive() -> None:
        nonlocal now
        t, r = timeline.pop(0)
        now = max(now, t)
        s.submit(r)

    while (timeline or len(s) or running) and steps < 10_000:
        steps += 1
        next_arrival = timeline[0][0] if timeline else float("inf")
        if running:
            if busy_until <= next_arrival:
                now, running = busy_until, False
                s.round_done(now)
            else:
                arrive()
            continue
        if not len(s):
            arrive()
            continue
        waiting = list(s.waiting)
        order = s.ordered(now)
        batch = s.next_batch(now)
        if batch is None:  # lingering: never for a final, never past the deadline
            assert not any(s.urgent(r, now) for r in waiting)
            deadline = s.deadline
            assert deadline is not None and now < deadline <= now + config.linger + 1e-9
            if next_arrival < deadline:
                arrive()
            else:
                now = deadline
            continue
        assert batch.requests[0] == order[0]
        _check_batch(s, batch, waiting, now)
        for r in batch.requests:
            served[r.id] = now
        busy_until, running = now + cost, True
    assert set(served) == set(requests)  # nobody starves
    for i, r in requests.items():
        earlier = sum(1 for o in requests.values() if o.submitted <= r.submitted)
        bound = (0.0 if r.final else config.starve_after) + (earlier + 1) * (cost + config.linger)
        assert served[i] - r.submitted <= bound + 1e-9


@given(config=configs, events=arrivals)
def test_draining_serves_everything_once(
    config: SchedulerConfig, events: list[tuple[float, bool, int, str, float]]
) -> None:
    s = DecodeScheduler(config)
    for i, (gap, final, frames, group, _stale) in enumerate(events):
        s.submit(attrs.evolve(req(i, final=final, frames=frames, at=gap), group=group))
    seen: list[int] = []
    for _ in range(len(events) + 1):
        batch = s.next_batch(1.0)
        if batch is None:
            break
        seen.extend(batch.ids)
    assert sorted(seen) == list(range(len(events)))
    assert len(s) == 0


@settings(max_examples=100, deadline=None)
@given(
    config=configs,
    cost=st.floats(0.05, 0.5),
    gaps=st.lists(st.floats(0.0, 1.0), min_size=20, max_size=80),
    partial_at=st.floats(0.0, 2.0),
)
def test_partial_is_not_starved_by_a_flood_of_finals(
    config: SchedulerConfig, cost: float, gaps: list[float], partial_at: float
) -> None:
    """Finals arrive faster than the engine serves them; a partial still gets its turn."""
    s = DecodeScheduler(attrs.evolve(config, max_batch=1))
    finals, t = [], partial_at  # the partial waits first, then the flood begins
    for i, gap in enumerate(gaps):
        t += gap * cost  # faster than one per batch
        finals.append(req(i + 1, final=True, at=t))
    s.submit(req(0, at=partial_at))
    now, served_at = partial_at, None
    for _ in range(len(finals) * 3 + 10):
        while finals and finals[0].submitted <= now:
            s.submit(finals.pop(0))
        batch = s.next_batch(now)
        if batch is None:
            now = finals[0].submitted if finals else now + cost
            continue
        if 0 in batch.ids:
            served_at = now
            break
        now += cost
    assert served_at is not None
    # Once promoted, only requests submitted before it (and the batch in flight) go first.
    assert served_at - partial_at <= config.starve_after + 2 * cost + 1e-9


def test_partial_stretch_grows_with_the_engine_load_only() -> None:
    assert partial_stretch(0.0) == partial_stretch(0.6) == 1.0
    assert 1.0 < partial_stretch(0.7) < partial_stretch(0.9) < 3.0
    assert partial_stretch(0.95) == partial_stretch(1.0) == 3.0
    assert partial_stretch(0.8, max_stretch=2.0) <= 2.0


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_partial_stretch_is_monotonic(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert 1.0 <= partial_stretch(lo) <= partial_stretch(hi) <= 3.0


@given(config=configs, events=arrivals, now=st.floats(0.0, 30.0))
def test_urgent_only_batches_are_urgent(
    config: SchedulerConfig, events: list[tuple[float, bool, int, str, float]], now: float
) -> None:
    s = DecodeScheduler(config)
    for i, (gap, final, frames, group, _stale) in enumerate(events):
        s.submit(attrs.evolve(req(i, final=final, frames=frames, at=gap), group=group))
    urgent_waiting = [r for r in s.waiting if s.urgent(r, now)]
    batch = s.next_batch(now, urgent_only=True)
    if not urgent_waiting:
        assert batch is None and len(s) == len(events)
    else:
        assert batch is not None and batch.urgent
        assert all(s.urgent(r, now) for r in batch.requests)


def test_streams_served_together_are_waited_for_briefly() -> None:
    """Two streams out of phase: after a round, the one just served gets ``linger`` to join."""
    s = DecodeScheduler(SchedulerConfig(linger=0.05))
    s.submit(req(1, at=0.0))  # stream s1
    s.submit(req(2, at=0.0))  # stream s2
    first = s.next_batch(0.0)
    assert first is not None and first.ids == (1, 2)
    s.round_done(0.3)
    s.submit(attrs.evolve(req(3, at=0.31), stream="s1"))
    assert s.next_batch(0.31) is None and s.deadline == pytest.approx(0.35)
    s.submit(attrs.evolve(req(4, at=0.32), stream="s2"))
    both = s.next_batch(0.32)  # every active stream waits: no need to linger further
    assert both is not None and both.ids == (3, 4)
    s.round_done(0.6)
    s.submit(attrs.evolve(req(5, at=0.61), stream="s1"))
    assert s.next_batch(0.61) is None
    late = s.next_batch(0.66)  # the deadline passed: it runs alone
    assert late is not None and late.ids == (5,)
    s.round_done(0.9)
    s.submit(attrs.evolve(req(6, final=True, at=0.91), stream="s2"))
    final = s.next_batch(0.91)  # finals never linger
    assert final is not None and final.ids == (6,)


def test_finals_coming_due_together_join_the_batch_in_progress() -> None:
    s = DecodeScheduler(SchedulerConfig(max_batch=3, max_pad_frames=300))
    s.submit(req(1, final=True, frames=1000, at=0.0))
    running = s.next_batch(0.0)
    assert running is not None and running.ids == (1,)
    s.submit(req(2, at=0.01))  # a partial never joins
    s.submit(req(3, final=True, frames=1200, at=0.02))  # longer than the running window
    s.submit(req(4, final=True, frames=800, at=0.03))
    s.submit(req(5, final=True, frames=600, at=0.04))  # padded by 400 > 300
    s.submit(attrs.evolve(req(6, final=True, frames=1000, at=0.05), group="other"))
    s.submit(req(7, final=True, frames=1000, at=0.06))
    s.submit(req(8, final=True, frames=1000, at=0.07))  # max_batch reached
    joined = s.joiners(running, 0.1)
    assert joined is not None and joined.ids == (4, 7) and joined.frames == 1000
    assert joined.urgent
    assert {r.id for r in s.waiting} == {2, 3, 5, 6, 8}
    full = Batch(requests=running.requests + joined.requests, frames=1000, urgent=True)
    assert s.joiners(full, 0.1) is None
    partials = s.next_batch(0.2)
    assert (
        partials is not None
        and s.joiners(Batch(requests=(req(9),), frames=1000, urgent=False), 0.2) is None
    )


@given(config=configs, events=arrivals, now=st.floats(0.0, 30.0))
def test_joiners_keep_the_batch_within_its_limits(
    config: SchedulerConfig, events: list[tuple[float, bool, int, str, float]], now: float
) -> None:
    s = DecodeScheduler(config)
    at = 0.0
    for i, (gap, final, frames, group, _stale) in enumerate(events):
        at += gap
        s.submit(attrs.evolve(req(i, final=final, frames=frames, at=at), group=group))
    running = s.next_batch(now, urgent_only=True)
    if running is None:
        return
    waiting = list(s.waiting)
    joined = s.joiners(running, now)
    if joined is None:
        return
    members = running.requests + joined.requests
    assert len(members) <= config.max_batch
    assert all(s.urgent(r, now) for r in joined.requests)
    assert {r.group for r in members} == {running.requests[0].group}
    assert joined.frames == running.frames
    assert all(
        running.frames - config.max_pad_frames <= r.frames <= running.frames
        for r in joined.requests
    )
    assert len(members) * running.frames <= max(
        config.max_batch_frames, len(running.requests) * running.frames
    )
    assert {r.id for r in joined.requests} <= {r.id for r in waiting}
    assert not {r.id for r in joined.requests} & {r.id for r in s.waiting}
