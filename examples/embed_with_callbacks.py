"""Embedding a live session in an app, with callbacks.

A tiny "meeting notes" app: it runs one :class:`echopanel.client.Session`, shows partial text
as "typing…", keeps every final as a note, and reacts to state changes and errors — all
through the ``on_event`` callback. It plays the bundled recording through the full client
path against a server started in-process (the fake ASR by default, so it runs anywhere in a
second; ``--whisper`` for the real model), or against your own server with ``--url``::

    python examples/embed_with_callbacks.py             # in-process server, fake ASR
    python examples/embed_with_callbacks.py --whisper   # in-process server, Whisper tiny.en
    python examples/embed_with_callbacks.py --url ws://127.0.0.1:8765 --source mic
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import anyio

from echopanel.capture import FileCapture, GrantingPermissionGate
from echopanel.client import (
    ErrorEvent,
    FinalEvent,
    PartialEvent,
    Session,
    SessionConfig,
    SessionEvent,
    StateChanged,
)
from echopanel.errors import SessionError

SAMPLE = Path(__file__).resolve().parent.parent / "echopanel" / "data" / "jfk.flac"


class MeetingNotes:
    """The app's model: notes (finals), what is being said right now, state, errors."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.typing = ""
        self.states: list[str] = []
        self.errors: list[str] = []

    def on_event(self, event: SessionEvent) -> None:
        """Called by the session for every event, in order, on the session's task."""
        match event:
            case StateChanged(state=state) if not self.states or self.states[-1] != state:
                self.states.append(state)
                print(f"  (session is {state})")
            case PartialEvent(message=partial):
                self.typing = partial.text
            case FinalEvent(message=final):
                self.typing = ""
                self.notes.append(final.text.strip())
                print(f"  note: {final.text.strip()}")
            case ErrorEvent(code=code, message=message):
                self.errors.append(f"{code.value}: {message}")


@contextlib.asynccontextmanager
async def backend(url: str | None, *, whisper: bool) -> AsyncIterator[str]:
    """``url`` when given, else a server started in this process on a free port."""
    if url is not None:
        yield url
        return
    from echopanel.server import ServerConfig, serve_in_background

    config = ServerConfig(asr="whisper" if whisper else "fake")
    async with serve_in_background(config, ready_timeout=120) as base:
        yield base.replace("http://", "ws://")


async def take_notes(
    url: str | None = None, *, file: Path = SAMPLE, speed: float = 4.0, whisper: bool = False
) -> MeetingNotes:
    """Run one session over ``file`` and return the app's notes."""
    app = MeetingNotes()
    async with backend(url, whisper=whisper) as ws_url:
        config = SessionConfig(url=ws_url, sources=("system",), stop_on_capture_end=True)
        session = Session(
            config,
            capture_factory=lambda source: FileCapture(file, source, speed=speed),
            permission_gate=GrantingPermissionGate(),
            on_event=app.on_event,
        )
        async with session:
            try:
                await session.start()
                await session.wait_closed()  # the file ends → stop → summary → idle
            except SessionError as exc:
                print(f"  could not take notes: {exc.message}")
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=None, help="an existing server (default: in-process)")
    parser.add_argument("--whisper", action="store_true", help="use the real model in-process")
    parser.add_argument("--file", type=Path, default=SAMPLE)
    args = parser.parse_args(argv)
    app = anyio.run(lambda: take_notes(args.url, file=args.file, whisper=args.whisper))
    print(f"{len(app.notes)} note(s); states: {' → '.join(app.states)}")
    return 1 if app.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
