"""h11-style pair test: the client's ``SessionMachine`` and the server core, talking.

No network: an in-memory link carries every message as wire text (``encode`` then
``decode_*``), the test plays both shells (permissions, captures, ASR, slots) and owns the
clock. One scenario per path of the seed: the happy path and each failure.
"""

from __future__ import annotations

from echopanel.protocol import FinalSummary
from echopanel.server.core import AsrFailed, CloseAsrStreams, DrainRequested, Fault, Send
from echopanel.session import StopRequested

from ._pair import Link


def test_happy_path_start_stream_stop_summary():
    link = Link()
    link.start()
    assert link.client.state == "listening" and link.server.phase == "streaming"
    assert link.client.connection_id == "srv-1"
    link.audio(3)
    link.to_client(StopRequested())
    link.pump()
    end = link.outcome()
    assert end.outcome == "completed" and isinstance(end.summary, FinalSummary)
    assert [e.text for e in end.summary.transcript] == ["word1", "word2", "word3"]
    assert link.client.state == "idle" and link.server.closed
    assert link.server_closes() == [1000] and link.released()
    assert any(isinstance(a, CloseAsrStreams) for a in link.server_actions)


def test_unauthorized():
    link = Link(server_token="s3cret", client_token="wrong")
    link.start()
    assert link.outcome().outcome == "error:unauthorized"
    assert link.server_closes() == [1008] and link.released()


def test_right_token_is_accepted():
    link = Link(server_token="s3cret", client_token="s3cret")
    link.start()
    assert link.client.state == "listening"


def test_server_at_capacity():
    link = Link(slot="refused")
    link.start()
    assert link.outcome().outcome == "error:server_at_capacity"
    assert link.server_closes() == [1013] and link.released()


def test_asr_unavailable():
    link = Link(asr_ready=False)
    link.start()
    assert link.outcome().outcome == "error:asr_unavailable"
    assert link.server_closes() == [1011]


def test_unsupported_audio_format():
    link = Link(mangle_start={"sample_rate": 44100})
    link.start()
    assert link.outcome().outcome == "error:unsupported_audio_format"
    assert link.server_closes() == [1003]


def test_backend_start_timeout_while_the_server_waits_for_a_slot():
    link = Link(slot="held")
    link.start()
    assert link.client.state == "starting" and link.server.phase == "admitting"
    link.advance(link.client.deadline)
    assert link.outcome().outcome == "error:backend_start_timeout"
    assert link.server.closed  # the client closed: the server saw the peer go
    link.to_server(link.held.pop())  # the slot is granted after all: it goes straight back
    link.pump()
    assert link.released() and not link.server_closes()


def test_permission_denied_never_reaches_the_server():
    link = Link(permission=False)
    link.start()
    assert link.outcome().outcome.startswith("error:screen_recording")
    assert link.server is None


def test_asr_failure_mid_session():
    link = Link()
    link.start()
    link.audio(1)
    link.to_server(AsrFailed(source="system", message="decoder died"))
    link.pump()
    assert link.outcome().outcome == "error:asr_unavailable"
    assert link.server_closes() == [1011] and link.released()


def test_client_stop_during_start_releases_the_server_side():
    link = Link(slot="held")
    link.start()
    link.to_client(StopRequested())
    link.pump()
    assert link.outcome().outcome == "cancelled" and link.server.closed
    link.to_server(link.held.pop())
    link.pump()
    assert link.released()


def _drained() -> Link:
    link = Link()
    link.start()
    link.audio(2)
    link.to_server(DrainRequested())
    link.pump()
    return link


def test_server_drain_mid_session_sends_everything_then_closes_1001():
    link = _drained()
    sent = [a.message for a in link.server_actions if isinstance(a, Send)]
    kinds = [m.type for m in sent]
    assert kinds[-2:] == ["status", "final_summary"] and sent[-2].reason == "drain"
    assert [e.text for e in sent[-1].transcript] == ["word1", "word2"]
    assert link.server_closes() == [1001] and link.released()


def test_server_drain_mid_session_completes_the_client_with_its_summary():
    end = _drained().outcome()
    assert end.outcome == "completed" and end.summary is not None
    assert [e.text for e in end.summary.transcript] == ["word1", "word2"]


def test_idle_audio_ends_the_session_with_idle_timeout():
    link = Link()
    link.start()
    assert link.server.timer == "idle"
    link.advance(link.server.deadline)
    assert link.outcome().outcome == "error:idle_timeout"
    assert link.server_closes() == [4408] and link.released()


def test_internal_fault_reaches_the_client_as_internal_error():
    link = Link()
    link.start()
    link.to_server(Fault())
    link.pump()
    assert link.outcome().outcome == "error:internal_error"
    assert link.server_closes() == [1011] and link.released()
