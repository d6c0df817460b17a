"""A private PulseAudio server with a null sink, for headless capture (CI, tests, demos).

Playing audio into the sink (``paplay --device=<sink>``) makes it appear on the sink's
monitor source ``<sink>.monitor``, which :class:`SoundDeviceCapture` records as system
audio. The server lives in its own temporary runtime directory, accepts anonymous local
clients, and is stopped (by its process id) when the context exits::

    with private_pulse_server("echopanel_test") as pulse:
        os.environ.update(pulse.env)  # before PortAudio enumerates (or call devices.refresh())
        ...

Needs the ``pulseaudio`` binary (Debian: ``apt-get install pulseaudio pulseaudio-utils``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import attrs

__all__ = ["PulseServer", "PulseUnavailable", "private_pulse_server"]


class PulseUnavailable(RuntimeError):
    """The private server could not be started (binary missing, or it did not come up)."""


@attrs.frozen(kw_only=True)
class PulseServer:
    """A running private server: its environment for clients, sink and monitor names."""

    env: Mapping[str, str]
    sink: str
    pid: int
    runtime_dir: Path

    @property
    def monitor(self) -> str:
        return f"{self.sink}.monitor"

    def play(self, path: str | os.PathLike[str], *, wait: bool = False) -> subprocess.Popen[bytes]:
        """Play ``path`` into the sink with ``paplay`` (a child process)."""
        paplay = shutil.which("paplay")
        if paplay is None:
            raise PulseUnavailable("paplay not found (Debian: apt-get install pulseaudio-utils)")
        proc = subprocess.Popen(
            [paplay, f"--device={self.sink}", str(path)],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait:
            proc.wait(timeout=120)
        return proc


def _ready(env: Mapping[str, str]) -> bool:
    pactl = shutil.which("pactl")
    if pactl is None:
        return Path(env["PULSE_RUNTIME_PATH"], "native").exists()
    done = subprocess.run(
        [pactl, "info"], env={**os.environ, **env}, capture_output=True, timeout=5, check=False
    )
    return done.returncode == 0


@contextmanager
def private_pulse_server(
    sink: str = "echopanel_sink", *, timeout: float = 15.0
) -> Iterator[PulseServer]:
    """Start a private PulseAudio server with one null sink; stop it on exit."""
    binary = shutil.which("pulseaudio")
    if binary is None:
        raise PulseUnavailable("the pulseaudio binary is not installed")
    runtime = Path(tempfile.mkdtemp(prefix="echopanel-pulse-"))
    pulse_dir = runtime / "pulse"
    pulse_dir.mkdir()
    socket = pulse_dir / "native"
    env = {
        "XDG_RUNTIME_DIR": str(runtime),
        "PULSE_RUNTIME_PATH": str(pulse_dir),
        "PULSE_STATE_PATH": str(runtime / "state"),
        "PULSE_SERVER": f"unix:{socket}",
        "PULSE_COOKIE": str(runtime / "cookie"),
    }
    proc = subprocess.Popen(
        [
            binary,
            "--daemonize=no",
            "--exit-idle-time=-1",
            "-n",
            "--use-pid-file=no",
            "--log-target=stderr",
            "--log-level=error",
            f"--load=module-null-sink sink_name={sink}",
            f"--load=module-native-protocol-unix auth-anonymous=1 socket={socket}",
        ],
        env={**os.environ, **env, "HOME": str(runtime)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _ready(env):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise PulseUnavailable(f"pulseaudio exited ({proc.returncode}): {err.strip()}")
            if time.monotonic() > deadline:
                raise PulseUnavailable(f"pulseaudio did not answer within {timeout:g} s")
            time.sleep(0.1)
        yield PulseServer(env=env, sink=sink, pid=proc.pid, runtime_dir=runtime)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(runtime, ignore_errors=True)
