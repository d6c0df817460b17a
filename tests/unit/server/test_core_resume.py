"""The server core's resume rules (protocol 1.1): park on an abnormal loss, re-attach, expire."""

from __future__ import annotations

import pytest

from echopanel.ports import AsrFinalUpdate
from echopanel.protocol import AsrFinal, FinalSummary, StatusMessage
from echopanel.server.core import (
    AsrDone,
    AsrOutput,
    Attach,
    Close,
    CloseAsrStreams,
    CountReplayedAudio,
    DrainRequested,
    FeedAudio,
    PeerGone,
    ReleaseSlot,
    ResumeExpired,
    ResumeRequested,
    Send,
    TimerFired,
)

SECOND = b"\x01\x00" * 16000


def resumable(core, **config):
    d = core(resume_window=30.0, resume_token="tok-1", **config)
    d.to_streaming(client_features={"resume": True})
    return d


def emit(d, n, *, at=None):
    update = AsrFinalUpdate(text=f"final {n}", t0=n, t1=n + 1, confidence=0.9, segment_id=str(n))
    return d.feed(AsrOutput(source="system", updates=(update,)), at=at)


def request(token="tok-1", last=None, new="tok-2", **fields):
    return ResumeRequested(
        resume_token=token, last_segment_id=last, connection_id="conn-2", new_token=new, **fields
    )


def acks(d):
    return [m for m in d.sent(StatusMessage) if m.state == "streaming"]


def test_the_ack_carries_the_token_only_for_a_client_that_resumes(core):
    d = resumable(core)
    assert acks(d)[-1].resume_token == "tok-1" and d.s.resumable
    old = core(resume_window=30.0, resume_token="tok-1")
    old.to_streaming()  # a v1 / v0.2 client: no client_features.resume
    assert acks(old)[-1].resume_token is None and not old.s.resumable
    off = core(resume_window=0.0, resume_token="tok-1")
    off.to_streaming(client_features={"resume": True})
    assert acks(off)[-1].resume_token is None


def test_a_v1_client_lost_abnormally_is_released_as_today(core):
    d = core(resume_window=30.0, resume_token="tok-1")
    d.to_streaming()
    assert d.feed(PeerGone(code=1006)) == [CloseAsrStreams(), ReleaseSlot()]
    assert d.s.closed


def test_a_clean_close_is_not_parked(core):
    d = resumable(core)
    d.feed(PeerGone(code=1000))
    assert d.s.closed and d.of(ReleaseSlot)


@pytest.mark.parametrize("code", [None, 1006, 1001, 1011, 1012])
def test_an_abnormal_loss_parks_the_session_holding_its_slot(core, code):
    d = resumable(core)
    assert d.feed(PeerGone(code=code), at=5.0) == []
    assert d.s.parked and d.s.timer == "resume" and d.s.deadline == 35.0
    assert not d.of(ReleaseSlot) and not d.of(Close)


def test_finals_made_while_parked_are_kept_and_resent_after_the_clients_last(core):
    d = resumable(core)
    emit(d, 1)
    emit(d, 2)
    d.feed(PeerGone(code=1006), at=5.0)
    before = len(d.actions)
    assert emit(d, 3) == []  # nothing is sent while parked
    actions = d.feed(request(last="system-1"), at=8.0)
    assert isinstance(actions[0], Attach) and actions[0].resent_finals == 2
    assert actions[0].connection_id == "conn-2"
    sent = [a.message for a in actions if isinstance(a, Send)]
    assert [m.segment_id for m in sent if isinstance(m, AsrFinal)] == ["system-2", "system-3"]
    (ack,) = [m for m in sent if isinstance(m, StatusMessage)]
    assert ack.state == "streaming" and ack.resumed is True and ack.resume_token == "tok-2"
    assert ack.connection_id == "conn-2" and ack.session_id == "s1"
    assert isinstance(sent[-1], StatusMessage)  # the ACK comes after the re-sent finals
    assert d.s.phase == "streaming" and d.s.timer == "idle"
    assert len(d.actions) > before


def test_no_last_segment_or_an_unknown_one_resends_every_kept_final(core):
    for last in (None, "system-99"):
        d = resumable(core)
        emit(d, 1)
        d.feed(PeerGone())
        actions = d.feed(request(last=last))
        finals = [a.message for a in actions if isinstance(a, Send)]
        assert [m.segment_id for m in finals if isinstance(m, AsrFinal)] == ["system-1"]


def test_the_ack_says_from_which_audio_position_the_server_needs_audio(core):
    d = resumable(core)
    d.audio(pcm=SECOND)
    d.audio(pcm=SECOND[:16000])  # half a second
    d.feed(PeerGone())
    d.feed(request())
    assert acks(d)[-1].audio_seconds == {"system": 1.5}


@pytest.mark.parametrize("token", ["tok-2", "tok-", "TOK-1", "x" * 200])
def test_a_wrong_token_never_takes_the_session_over(core, token):
    d = resumable(core)
    d.feed(PeerGone())
    assert d.feed(request(token=token)) == []
    assert d.s.parked


def test_tokens_are_single_use(core):
    d = resumable(core)
    d.feed(PeerGone())
    assert d.feed(request(token="tok-1", new="tok-2"))
    d.feed(PeerGone())
    assert d.feed(request(token="tok-1", new="tok-3")) == []
    assert d.feed(request(token="tok-2", new="tok-3"))


def test_a_half_open_connection_is_taken_over_by_a_resume(core):
    d = resumable(core)
    actions = d.feed(request())
    assert isinstance(actions[0], Attach) and d.s.connection_id == "conn-2"
    assert d.s.phase == "streaming"


def test_the_window_passing_releases_everything_and_is_counted(core):
    d = resumable(core)
    d.feed(PeerGone(), at=1.0)
    assert d.feed(TimerFired(), at=30.9) == []
    actions = d.feed(TimerFired(), at=31.0)
    assert actions == [ResumeExpired(), CloseAsrStreams(), ReleaseSlot()]
    assert d.s.closed and d.feed(request()) == []


def test_drain_while_parked_releases(core):
    d = resumable(core)
    d.feed(PeerGone())
    assert d.feed(DrainRequested()) == [CloseAsrStreams(), ReleaseSlot()]


def test_the_outage_audio_is_allowed_past_the_rate_bound_once(core):
    d = resumable(core, max_audio_rate=2.0, audio_burst=10.0)
    d.audio(pcm=SECOND)  # the last audio before the loss, at t=0
    d.feed(PeerGone(), at=0.5)
    d.feed(request(audio_seconds={"system": 2.0}), at=20.0)  # 1 s sent never arrived
    fed = []
    for _ in range(40):  # 40 s at once: the 10 s burst + 20 s outage + 1 s lost in flight
        fed += d.audio(pcm=SECOND)
    accepted = [a for a in fed if isinstance(a, FeedAudio)]
    replayed = sum(a.seconds for a in fed if isinstance(a, CountReplayedAudio))
    assert len(accepted) == 31 and replayed == pytest.approx(21.0)


def test_without_a_resume_the_rate_bound_is_unchanged(core):
    d = core(max_audio_rate=2.0, audio_burst=10.0)
    d.to_streaming()
    accepted = [a for _ in range(35) for a in d.audio(pcm=SECOND) if isinstance(a, FeedAudio)]
    assert len(accepted) == 10


def test_a_loss_during_the_stop_flush_parks_and_the_resume_gets_the_summary(core):
    d = resumable(core)
    emit(d, 1)
    d.stop()
    assert d.s.phase == "finalizing"
    d.feed(PeerGone(), at=2.0)
    assert d.s.parked and not d.of(ReleaseSlot)
    d.feed(AsrDone(source="system"))  # the flush finishes while nobody listens
    assert d.s.parked
    actions = d.feed(request(last="system-1"), at=3.0)
    sent = [a.message for a in actions if isinstance(a, Send)]
    assert isinstance(sent[0], StatusMessage) and sent[0].resumed
    assert isinstance(sent[-1], FinalSummary) and d.closes() == [1000]
    assert d.s.closed and d.of(ReleaseSlot)


def test_a_resume_during_a_flush_that_is_not_done_waits_for_it_bounded(core):
    d = resumable(core, flush_timeout=4.0)
    d.stop()
    d.feed(PeerGone(), at=1.0)
    d.feed(request(), at=2.0)
    assert d.s.phase == "finalizing" and d.s.timer == "flush" and d.s.deadline == 6.0
    d.feed(AsrDone(source="system"), at=2.5)
    assert d.closes() == [1000]
