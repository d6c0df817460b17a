"""The connection-rule options: ServerConfig, environment, ``echopanel serve`` flags, wire."""

from __future__ import annotations

import pytest

from echopanel.errors import CLOSE_CODES, EXIT_CODES, ErrorCode, ProtocolError
from echopanel.protocol import FinalSummary, StatusMessage, decode_server, encode
from echopanel.server.config import ServerConfig


def test_defaults_and_environment():
    config = ServerConfig()
    assert (config.idle_timeout, config.max_audio_rate, config.audio_burst) == (60.0, 2.0, 10.0)
    assert config.max_summary_bytes == 2 * 1024 * 1024
    env = {"ECHOPANEL_IDLE_TIMEOUT": "5", "ECHOPANEL_MAX_AUDIO_RATE": "0"}
    config = ServerConfig.from_env(env)
    assert (config.idle_timeout, config.max_audio_rate) == (5.0, 0.0)
    assert ServerConfig.from_env(env, idle_timeout=7.0).idle_timeout == 7.0


@pytest.mark.parametrize(
    "bad",
    [{"idle_timeout": -1}, {"max_audio_rate": -2}, {"audio_burst": 0}, {"max_summary_bytes": 10}],
)
def test_invalid_values_are_refused(bad):
    with pytest.raises(ValueError):
        ServerConfig(**bad)


def test_serve_flags_parse():
    from echopanel.cli.main import build_parser

    args = build_parser().parse_args(["serve", "--idle-timeout", "30", "--max-audio-rate", "3"])
    assert (args.idle_timeout, args.max_audio_rate) == (30.0, 3.0)


def test_new_codes_have_close_and_exit_codes_and_1011_still_means_asr_unavailable():
    assert CLOSE_CODES[ErrorCode.IDLE_TIMEOUT] == 4408
    assert CLOSE_CODES[ErrorCode.INTERNAL_ERROR] == 1011
    assert EXIT_CODES[ErrorCode.IDLE_TIMEOUT] == EXIT_CODES[ErrorCode.INTERNAL_ERROR] == 3
    reverse = {close: code for code, close in CLOSE_CODES.items()}
    assert reverse[1011] is ErrorCode.ASR_UNAVAILABLE


def test_wire_fields_round_trip_and_are_checked():
    status = StatusMessage(state="warning", message="bye", reason="drain")
    assert decode_server(encode(status)) == status
    summary = FinalSummary(truncated=True, omitted_finals=3, counts={"finals": 3})
    assert decode_server(encode(summary)) == summary
    assert "truncated" not in encode(FinalSummary())
    with pytest.raises(ProtocolError):
        decode_server('{"type":"final_summary","truncated":"yes"}')
