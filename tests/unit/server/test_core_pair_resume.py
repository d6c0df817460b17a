"""Pair test for resume: the client's machine and the server cores of two connections.

The link of the pair tests (``_pair.Link``) plays both shells; here the network is cut: the
server core parks the session, the client reconnects, a new connection's core looks the
session up and hands its socket over. Every final the fake ASR made reaches the client
once, in order.
"""

from __future__ import annotations

from typing import Any

import attrs

from echopanel.protocol import FinalSummary, ResumeMessage, encode
from echopanel.server.core import (
    Attach,
    CoreConfig,
    LookupSession,
    Opened,
    PeerGone,
    ResumeAccepted,
    ResumeRefused,
    ResumeRequested,
    ServerSession,
    TextReceived,
    check_token,
)
from echopanel.session import Connected, StopRequested, TransportClosed
from echopanel.session.effects import CloseTransport, Connect, EmitMessage, SendResume

from ._pair import Link


@attrs.define
class ResumeLink(Link):  # type: ignore[misc]
    """Every connection gets its own server core; parked sessions can be looked up."""

    sessions: list[ServerSession] = attrs.Factory(list)
    connections: int = 0
    server_lost: bool = False  # the server's side of the current connection is gone

    def run_client(self, effect: Any) -> None:
        match effect:
            case Connect(headers=headers, connection=connection):
                self.connections += 1
                self.server = ServerSession(
                    CoreConfig(start_timeout=10.0, flush_timeout=8.0, resume_window=30.0),
                    connection_id=f"srv-{self.connections}",
                    resume_token=f"tok-{self.connections}",
                )
                self.server_lost = False
                self.sessions.append(self.server)
                self.to_client(Connected(attempt_id=self.attempt, connection=connection))
                self.to_server(Opened(authorized=check_token(self.server_token, headers)))
            case SendResume():  # as the shell does (its audio seconds: none here)
                message = ResumeMessage(
                    session_id=effect.session_id,
                    resume_token=effect.resume_token,
                    last_segment_id=effect.last_segment_id,
                )
                self.to_server(TextReceived(text=encode(message)))
            case CloseTransport():
                if self.server is not None and not self.server.closed and not self.server_lost:
                    self.to_server(PeerGone(code=1000))
            case _:
                super().run_client(effect)

    def run_server(self, action: Any) -> None:
        match action:
            case LookupSession(message=message):
                new = self.server
                assert new is not None
                for session in self.sessions:
                    if session is new or session.session_id != message.session_id:
                        continue
                    request = ResumeRequested(
                        resume_token=message.resume_token,
                        last_segment_id=message.last_segment_id,
                        audio_seconds=message.audio_seconds,
                        connection_id=new.connection_id,
                        new_token=f"tok-r{self.connections}",
                    )
                    actions = session.handle(request, self.now)
                    if any(isinstance(a, Attach) for a in actions):
                        new.handle(ResumeAccepted(), self.now)
                        self.server = session
                        for follow in actions:
                            self.server_actions.append(follow)
                            self.run_server(follow)
                        return
                self.to_server(ResumeRefused())
            case _:
                super().run_server(action)

    def cut(self) -> None:
        """The network drops the connection: each side learns it on its own."""
        assert self.server is not None
        self.server_lost = True
        self.to_server(PeerGone(code=None))
        self.to_client(
            TransportClosed(
                attempt_id=self.attempt, close_code=1006, connection=self.client.connection
            )
        )
        self.pump()

    def finals(self) -> list[str]:
        return [
            e.message.segment_id
            for e in self.client_effects
            if isinstance(e, EmitMessage) and type(e.message).__name__ == "AsrFinal"
        ]


def test_cut_twice_every_final_once_in_order_and_one_summary():
    link = ResumeLink()
    link.start()
    link.audio(2)
    link.cut()
    assert link.client.state == "reconnecting" and link.server.parked
    link.advance(link.client.deadline)  # the first try is at once
    assert link.client.state == "listening" and link.server.phase == "streaming"
    link.audio(2)
    link.cut()
    link.advance(link.client.deadline)
    assert link.client.state == "listening"
    link.audio(1)
    link.to_client(StopRequested())
    link.pump()
    end = link.outcome()
    assert end.outcome == "completed" and isinstance(end.summary, FinalSummary)
    ids = link.finals()
    assert ids == [f"system-seg{n}" for n in range(1, 6)]
    assert [e.segment_id for e in end.summary.transcript] == ids
    assert link.server.closed and link.released()
    assert link.connections == 3


def test_a_session_id_with_a_wrong_token_is_refused():
    link = ResumeLink()
    link.start()
    link.cut()
    session = link.server
    link.server = ServerSession(CoreConfig(resume_window=30.0), connection_id="thief")
    link.sessions.append(link.server)
    link.to_server(Opened(authorized=True))
    guess = ResumeMessage(session_id=link.client.session_id, resume_token="guess")
    link.to_server(TextReceived(text=encode(guess)))
    link.pump()
    assert link.server.closed and link.server.close_code == 4404
    assert session.parked  # untouched
