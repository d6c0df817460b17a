"""``host_is_loopback``: which ``Host`` headers a loopback-bound server answers."""

from __future__ import annotations

import pytest

from echopanel.server.guards import host_is_loopback


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST:8765", "localhost.", "127.0.0.1", "127.0.0.1:1", "127.9.8.7:80",
     "[::1]", "[::1]:8765"],
)  # fmt: skip
def test_loopback_hosts(host):
    assert host_is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["attacker.example", "attacker.example:8765", "127.0.0.1.nip.io", "localhost.example",
     "0.0.0.0:8765", "10.0.0.1", "[::2]:80", "[::1", "user@127.0.0.1", "127.0.0.1/x",
     "", " ", "localhost:notaport", "evil.localhost"],
)  # fmt: skip
def test_other_hosts(host):
    assert not host_is_loopback(host)
