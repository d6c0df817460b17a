"""``echopanel listen`` / ``demo`` argument parsing and usage errors (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from echopanel.cli.demo import sample_path
from echopanel.cli.listen import SourceSpec, parse_devices, parse_source
from echopanel.cli.main import build_parser, main


@pytest.mark.parametrize(
    ("value", "sources"),
    [("mic", ("mic",)), ("system", ("system",)), ("both", ("system", "mic"))],
)
def test_live_sources(value: str, sources: tuple[str, ...]) -> None:
    assert parse_source(value) == SourceSpec(sources=sources)  # type: ignore[arg-type]


def test_file_source() -> None:
    spec = parse_source("file:/tmp/a b.flac")
    assert spec.sources == ("system",) and spec.file == Path("/tmp/a b.flac")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_source("file:")
    with pytest.raises(argparse.ArgumentTypeError, match="mic, system, both or file:PATH"):
        parse_source("speakers")


def test_devices_for_all_or_one_source() -> None:
    assert parse_devices(["3"], ("system", "mic")) == {"system": "3", "mic": "3"}
    assert parse_devices(["mic=USB", "system=x.monitor"], ("system", "mic")) == {
        "mic": "USB",
        "system": "x.monitor",
    }
    assert parse_devices(None, ("mic",)) == {}
    with pytest.raises(ValueError, match="not being captured"):
        parse_devices(["mic=USB"], ("system",))


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["listen", "--url", "ws://127.0.0.1:1"])
    assert args.source == SourceSpec(sources=("system",))
    assert not args.json and args.bundle_dir is None and args.start_timeout == 5.0
    demo = build_parser().parse_args(["demo", "--json", "--fast"])
    assert demo.json and demo.fast and demo.asr == "whisper"


@pytest.mark.parametrize(
    "argv",
    [
        ["listen"],  # --url is required
        ["listen", "--url", "ws://x", "--source", "speakers"],
        ["listen", "--url", "ws://x", "--start-timeout", "soon"],
        ["listen", "--url", "ftp://x", "--source", "file:a.wav"],
        ["listen", "--url", "127.0.0.1:8765", "--source", "file:a.wav"],
        ["listen", "--url", "ws://x", "--start-timeout", "0"],
        ["listen", "--url", "ws://x", "--start-timeout", "nan"],
        ["demo", "--start-timeout", "-1"],
        ["demo", "--asr", "nope"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_device_with_file_source_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["listen", "--url", "ws://x", "--source", "file:a.wav", "--device", "1"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "echopanel: error: --device does not apply to a file: source"
    )


def test_bundled_sample_exists() -> None:
    path = sample_path()
    assert path.is_file() and path.stat().st_size > 100_000
