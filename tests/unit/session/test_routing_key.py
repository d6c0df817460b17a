"""The routing key: every attempt of one session connects with ``?session=<session_id>``."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from hypothesis import given
from hypothesis import strategies as st

from echopanel.ports import PermissionKind
from echopanel.session import (
    CaptureStarted,
    Connect,
    ConnectFailed,
    PermissionAnswered,
    StartRequested,
    StopRequested,
)
from echopanel.session.config import ROUTING_KEY_PARAM, normalize_url, with_routing_key

SCREEN = PermissionKind.SCREEN_RECORDING


def test_key_is_added_to_the_endpoint_url():
    url = normalize_url("ws://lb.example:8765")
    assert with_routing_key(url, "s-1") == "ws://lb.example:8765/ws/live-listener?session=s-1"


def test_other_parameters_stay_and_an_earlier_key_is_replaced():
    url = "wss://lb.example/ws/live-listener?tenant=a&session=old&flag="
    keyed = with_routing_key(url, "new")
    assert parse_qs(urlsplit(keyed).query, keep_blank_values=True) == {
        "tenant": ["a"],
        "session": ["new"],
        "flag": [""],
    }
    assert keyed.startswith("wss://lb.example/ws/live-listener?")


@given(st.text(min_size=1, max_size=256))
def test_any_session_id_round_trips_and_is_stable(session_id):
    url = "ws://127.0.0.1:8765/ws/live-listener"
    keyed = with_routing_key(url, session_id)
    assert parse_qs(urlsplit(keyed).query, keep_blank_values=True)[ROUTING_KEY_PARAM] == [
        session_id
    ]
    assert with_routing_key(keyed, session_id) == keyed  # same key → same URL → same replica
    assert "#" not in keyed.split("?", 1)[1]  # encoded: cannot end the query


def test_a_retry_after_an_error_connects_with_the_same_key(drive):
    d = drive()
    d.feed(StartRequested())
    d.feed(PermissionAnswered(attempt_id=d.attempt, kind=SCREEN, granted=True))
    d.feed(CaptureStarted(attempt_id=d.attempt, source="system"))
    first_attempt = d.attempt
    d.feed(ConnectFailed(attempt_id=d.attempt, message="refused"))
    assert d.m.state == "error"
    d.to_listening()  # a new start from error: a new attempt of the same session
    assert d.attempt != first_attempt
    first, second = d.of(Connect)
    assert (
        first.url == second.url == f"ws://127.0.0.1:8765/ws/live-listener?session={d.m.session_id}"
    )


def test_a_new_session_connects_with_a_new_key(drive):
    d = drive()
    d.feed(StartRequested())
    d.feed(PermissionAnswered(attempt_id=d.attempt, kind=SCREEN, granted=True))
    d.feed(CaptureStarted(attempt_id=d.attempt, source="system"))
    first_session = d.m.session_id
    d.feed(StopRequested())  # cancelled while connecting: back to idle
    assert d.m.state == "idle"
    d.to_listening()
    assert d.m.session_id != first_session
    first, second = d.of(Connect)
    assert first.url.endswith(f"?session={first_session}")
    assert second.url.endswith(f"?session={d.m.session_id}")
