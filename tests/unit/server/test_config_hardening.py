"""``ServerConfig`` hardening options: origins, pending cap (validated, from the environment)."""

from __future__ import annotations

import pytest

from echopanel.server.config import ServerConfig, normalize_origin


def test_allowed_origins_come_from_the_environment_and_options_win():
    env = {"ECHOPANEL_ALLOW_ORIGINS": "https://a.example, http://localhost:3000"}
    config = ServerConfig.from_env(env)
    assert config.allow_origins == ("https://a.example", "http://localhost:3000")
    config = ServerConfig.from_env(env, allow_origins=("https://b.example",))
    assert config.allow_origins == ("https://b.example",)
    assert ServerConfig.from_env({"ECHOPANEL_MAX_PENDING": "4"}).max_pending == 4
    assert ServerConfig().max_pending == 32 and ServerConfig().allow_origins == ()


@pytest.mark.parametrize(
    "origin",
    ["evil.example", "https://a.example/path", "ftp://x", "", "http://user@host", "http://h?q"],
)
def test_a_malformed_allowed_origin_is_a_configuration_error(origin):
    with pytest.raises(ValueError, match="allowed origin"):
        ServerConfig(allow_origins=(origin,))


def test_max_pending_must_be_positive():
    with pytest.raises(ValueError):
        ServerConfig(max_pending=0)


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [
        ("HTTPS://App.Example:443", "https://app.example"),
        ("http://127.0.0.1:8765/", "http://127.0.0.1:8765"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("null", "null"),
    ],
)
def test_origins_are_normalized(origin, normalized):
    assert normalize_origin(origin) == normalized
