"""Protocol 1.1: the ``resume`` message and the resume fields of ``status``."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from echopanel.errors import CLOSE_CODES, ErrorCode, ProtocolError
from echopanel.protocol import (
    PROTOCOL_VERSION,
    ResumeMessage,
    StatusMessage,
    decode_client,
    decode_server,
    encode,
)


def test_version_is_1_1() -> None:
    assert PROTOCOL_VERSION == "1.1"


@given(
    token=st.text(min_size=1, max_size=64),
    last=st.none() | st.text(max_size=20),
    system=st.none() | st.floats(min_value=0, max_value=1e6),
)
def test_resume_round_trips(token: str, last: str | None, system: float | None) -> None:
    seconds = {} if system is None else {"system": system}
    message = ResumeMessage(
        session_id="s1", resume_token=token, last_segment_id=last, audio_seconds=seconds
    )
    assert decode_client(encode(message)) == message


def test_resume_token_is_not_in_the_repr() -> None:
    message = ResumeMessage(session_id="s1", resume_token="secret-token")
    assert "secret-token" not in repr(message)
    assert "secret-token" not in repr(StatusMessage(state="streaming", resume_token="secret-token"))


@pytest.mark.parametrize(
    "body",
    [
        {"session_id": "s1"},  # no token
        {"session_id": "s1", "resume_token": ""},
        {"session_id": "s1", "resume_token": "x" * 257},
        {"session_id": "", "resume_token": "t"},
        {"session_id": "s1", "resume_token": 5},
        {"session_id": "s1", "resume_token": "t", "last_segment_id": 3},
        {"session_id": "s1", "resume_token": "t", "audio_seconds": []},
        {"session_id": "s1", "resume_token": "t", "audio_seconds": {"speaker": 1.0}},
        {"session_id": "s1", "resume_token": "t", "audio_seconds": {"mic": -1}},
        {"session_id": "s1", "resume_token": "t", "audio_seconds": {"mic": "1"}},
    ],
)
def test_bad_resume_is_invalid_message(body: dict[str, object]) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_client(json.dumps({"type": "resume", **body}))
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_microphone_alias_in_audio_seconds() -> None:
    text = json.dumps(
        {
            "type": "resume",
            "session_id": "s",
            "resume_token": "t",
            "audio_seconds": {"microphone": 2},
        }
    )
    message = decode_client(text)
    assert isinstance(message, ResumeMessage) and message.audio_seconds == {"mic": 2.0}


def test_status_carries_token_resumed_and_positions() -> None:
    status = StatusMessage(
        state="streaming",
        resume_token="tok",
        resumed=True,
        audio_seconds={"system": 1.5, "mic": 0.0},
        session_id="s1",
    )
    text = encode(status)
    assert json.loads(text)["resumed"] is True
    assert decode_server(text) == status
    # a v1 ack has none of the fields
    plain = json.loads(encode(StatusMessage(state="streaming")))
    assert not {"resume_token", "resumed", "audio_seconds"} & plain.keys()


def test_resume_unknown_has_its_own_close_code() -> None:
    assert CLOSE_CODES[ErrorCode.RESUME_UNKNOWN] == 4404
