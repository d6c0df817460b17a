"""Protocol codec: hypothesis round-trips, fuzzing, and the pinned edge cases of DESIGN.md."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echopanel.errors import ErrorCode, ProtocolError
from echopanel.protocol import (
    MAX_FRAME_BYTES,
    STATUS_STATES,
    AnalysisUpdate,
    AsrFinal,
    AsrPartial,
    AudioFrame,
    AudioMessage,
    ErrorMessage,
    FinalSummary,
    MetricsMessage,
    SourceStats,
    StartMessage,
    StatusMessage,
    StopMessage,
    TranscriptEntry,
    decode_audio_frame,
    decode_client,
    decode_server,
    encode,
    encode_audio_frame,
)

text = st.text(max_size=40)
ident = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())
opt_id = st.none() | ident
num = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e9, max_value=1e9)
count = st.integers(min_value=0, max_value=2**53)
source = st.sampled_from(["system", "mic"])
pcm = st.binary(max_size=512).map(lambda b: b[: len(b) // 2 * 2])
ids = {"session_id": opt_id, "attempt_id": opt_id, "connection_id": opt_id}

client_messages = st.one_of(
    st.builds(
        StartMessage,
        session_id=ident,
        attempt_id=text,
        connection_id=opt_id,
        sources=st.none()
        | st.sampled_from([("system",), ("mic",), ("system", "mic"), ("mic", "system")]),
    ),
    st.builds(AudioMessage, source=source, pcm=pcm),
    st.builds(StopMessage, session_id=text),
)

server_messages = st.one_of(
    st.builds(
        StatusMessage,
        state=st.sampled_from(sorted(STATUS_STATES)),
        message=text,
        backlog_seconds=st.none() | num,
        dropped_frames=st.none() | count,
        degrade_level=st.none() | count,
        **ids,
    ),
    st.builds(AsrPartial, source=source, text=text, t0=num, t1=num, stable=st.booleans(), **ids),
    st.builds(
        AsrFinal,
        source=source,
        text=text,
        t0=num,
        t1=num,
        confidence=num,
        segment_id=text,
        stable=st.booleans(),
        **ids,
    ),
    st.builds(
        MetricsMessage,
        source=source,
        backlog_seconds=num,
        queue_fill=num,
        dropped_frames=count,
        realtime_factor=num,
        degrade_level=count,
        active_sessions=count,
        **ids,
    ),
    st.builds(ErrorMessage, code=st.sampled_from(list(ErrorCode)), message=text, **ids),
    st.builds(
        AnalysisUpdate,
        keywords=st.lists(text, max_size=4).map(tuple),
        topics=st.lists(text, max_size=4).map(tuple),
        **ids,
    ),
    st.builds(
        FinalSummary,
        transcript=st.lists(
            st.builds(
                TranscriptEntry,
                source=source,
                t0=num,
                t1=num,
                text=text,
                confidence=num,
                segment_id=text,
            ),
            max_size=3,
        ).map(tuple),
        markdown=text,
        sources=st.dictionaries(
            text, st.builds(SourceStats, audio_seconds=num, frames_dropped=count), max_size=2
        ),
        counts=st.dictionaries(text, count, max_size=3),
        **ids,
    ),
)


@given(client_messages)
def test_client_round_trip(message):
    decoded = decode_client(encode(message))
    assert decoded == message
    if isinstance(message, StartMessage):
        assert decoded.client_features == message.client_features


@given(server_messages)
def test_server_round_trip(message):
    assert decode_server(encode(message)) == message
    assert decode_server(encode(message).encode("utf-8")) == message


@given(source, st.binary(max_size=MAX_FRAME_BYTES - 4).map(lambda b: b[: len(b) // 2 * 2]))
@settings(max_examples=50)
def test_frame_round_trip(src, data):
    assert decode_audio_frame(encode_audio_frame(src, data)) == AudioFrame(source=src, pcm=data)


# --------------------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
TYPES = [
    "start",
    "audio",
    "stop",
    "status",
    "asr_partial",
    "asr_final",
    "metrics",
    "error",
    "analysis_update",
    "final_summary",
    "nope",
]
typed_objects = st.builds(
    lambda t, body, extra: {**body, **extra, "type": t},
    st.sampled_from(TYPES),
    st.fixed_dictionaries(
        {},
        optional={
            "session_id": json_values,
            "attempt_id": json_values,
            "source": json_values,
            "sources": json_values,
            "state": json_values | st.sampled_from(sorted(STATUS_STATES)),
            "text": json_values,
            "t0": json_values,
            "t1": json_values,
            "code": json_values,
            "data": json_values,
            "transcript": json_values,
            "counts": json_values,
            "sample_rate": json_values,
            "format": json_values,
            "channels": json_values,
            "keywords": json_values,
            "confidence": json_values,
            "segment_id": json_values,
            "dropped_frames": json_values,
            "backlog_seconds": json_values,
        },
    ),
    st.dictionaries(st.text(max_size=8), json_values, max_size=2),
)


def _only_protocol_errors(decode, payload):
    try:
        decode(payload)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)


@given(st.binary(max_size=300) | st.text(max_size=300))
def test_fuzz_arbitrary_input(payload):
    _only_protocol_errors(decode_client, payload)
    _only_protocol_errors(decode_server, payload)


@given(json_values | typed_objects)
def test_fuzz_arbitrary_json(value):
    payload = json.dumps(value)
    _only_protocol_errors(decode_client, payload)
    _only_protocol_errors(decode_server, payload)


@given(
    st.binary(max_size=300)
    | st.builds(
        lambda s, b: b"EP" + bytes(s) + b,
        st.lists(st.integers(0, 255), min_size=0, max_size=2),
        st.binary(max_size=20),
    )
)
def test_fuzz_frames(data):
    _only_protocol_errors(decode_audio_frame, data)


@pytest.mark.parametrize(
    "payload",
    [
        '{"type":"asr_partial","source":"mic","text":"","t0":' + "9" * 400 + ',"t1":0}',
        '{"type":"metrics","source":"mic","backlog_seconds":1e999}',
        "[" * 100_000,
        '{"type":"status","state":"connected","message":null}',
    ],
)
def test_pathological_numbers_and_nesting(payload):
    _only_protocol_errors(decode_server, payload)


# --------------------------------------------------------------------------- pinned edge cases


def _start(**fields):
    return json.dumps({"type": "start", "session_id": "s", "attempt_id": "a", **fields})


@pytest.mark.parametrize("bad", ["", "   ", "x" * 257, 5, None, ["s"]])
def test_bad_session_id_is_invalid_message(bad):
    with pytest.raises(ProtocolError) as info:
        decode_client(_start(session_id=bad))
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_session_id_limits():
    assert decode_client(_start(session_id="x" * 256)).session_id == "x" * 256
    assert decode_client(_start(session_id=" s ")).session_id == " s "


def test_sources_alias_optional_and_limits():
    assert decode_client(_start(sources=["microphone"])).sources == ("mic",)
    assert decode_client(_start()).sources is None
    assert decode_client(_start(sources=["system", "microphone"])).sources == ("system", "mic")
    for bad in (["system", "mic", "mic"], ["system", "mic", "system"], [], ["speaker"], "mic"):
        with pytest.raises(ProtocolError) as info:
            decode_client(_start(sources=bad))
        assert info.value.code is ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("fields", [{"sample_rate": 44100}, {"format": "f32le"}, {"channels": 2}])
def test_other_format_is_unsupported_audio_format(fields):
    with pytest.raises(ProtocolError) as info:
        decode_client(_start(**fields))
    assert info.value.code is ErrorCode.UNSUPPORTED_AUDIO_FORMAT


def test_ill_typed_format_fields_are_invalid_message():
    with pytest.raises(ProtocolError) as info:
        decode_client(_start(sample_rate="16000"))
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_odd_pcm_is_invalid_message():
    with pytest.raises(ProtocolError) as info:
        decode_audio_frame(b"EP\x01\x01" + b"\x00" * 3)
    assert info.value.code is ErrorCode.INVALID_MESSAGE
    with pytest.raises(ProtocolError):
        encode_audio_frame("mic", b"\x00")
    with pytest.raises(ProtocolError) as info:
        decode_client(json.dumps({"type": "audio", "source": "mic", "data": "AA=="}))
    assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_frame_without_header_is_system_pcm():
    assert decode_audio_frame(b"\x01\x02\x03\x04") == AudioFrame(
        source="system", pcm=b"\x01\x02\x03\x04"
    )
    assert decode_audio_frame(b"") == AudioFrame(source="system", pcm=b"")


def test_frame_header_errors():
    for bad in (b"EP\x02\x00", b"EP\x01\x07"):
        with pytest.raises(ProtocolError) as info:
            decode_audio_frame(bad)
        assert info.value.code is ErrorCode.INVALID_MESSAGE


def test_frames_over_64_kib_are_refused():
    at_limit = b"EP\x01\x00" + b"\x00" * (MAX_FRAME_BYTES - 4)
    assert len(decode_audio_frame(at_limit).pcm) == MAX_FRAME_BYTES - 4
    with pytest.raises(ProtocolError) as info:
        decode_audio_frame(at_limit + b"\x00\x00")
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(ProtocolError) as info:
        encode_audio_frame("system", b"\x00" * MAX_FRAME_BYTES)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_unknown_type_and_non_json_are_invalid_message():
    for payload in ('{"type":"dance"}', "not json", "[1,2]", '{"type":"status","state":"happy"}'):
        with pytest.raises(ProtocolError) as info:
            decode_server(payload)
        assert info.value.code is ErrorCode.INVALID_MESSAGE
    with pytest.raises(ProtocolError):
        decode_client('{"type":"status"}')
