"""The page's reconnect/resume (protocol 1.1) in a real Chromium: the page talks to
``echopanel serve --asr fake`` through a :class:`~echopanel.testing.proxy.CuttingProxy`; the
proxy drops the connection mid-session (no close frame, as on a network blip). The page shows
``reconnecting``, resumes the same server session, and after the stop its transcript holds
every final of the server's summary exactly once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from echopanel.testing.proxy import CuttingProxy

STATE_PROBE = """
window.__states = [];
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("status");
  const note = () => {
    const s = status.dataset.state;
    if (window.__states[window.__states.length - 1] !== s) window.__states.push(s);
  };
  new MutationObserver(note).observe(status, {attributes: true, attributeFilter: ["data-state"]});
  note();
});
"""


@pytest.fixture
def proxied(serve: Any) -> Iterator[tuple[Any, Any, Any]]:
    """A fake-ASR server, a cutting proxy in front of it (run on a portal's event loop)."""
    fake = serve("--asr", "fake")
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(CuttingProxy(fake.port)) as proxy,
    ):
        yield fake, proxy, portal


def finals(page: Any) -> list[str]:
    return list(
        page.eval_on_selector_all(
            "#finals li:not(.gap) .text", "els => els.map(e => e.textContent)"
        )
    )


def test_a_cut_connection_resumes_and_keeps_every_final_once(
    proxied: tuple[Any, Any, Any], browser: Any
) -> None:
    _fake, proxy, portal = proxied
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.add_init_script(STATE_PROBE)
    page.goto(f"http://127.0.0.1:{proxy.port}/")
    page.wait_for_function("() => document.getElementById('token-field').hidden === true")
    page.click("#start")
    page.wait_for_selector('#status[data-state="listening"]', timeout=60_000)
    page.wait_for_function(
        "() => document.querySelectorAll('#finals li').length >= 2", timeout=60_000
    )
    before = len(finals(page))
    assert portal.call(proxy.cut) >= 1  # the live socket (at least) is dropped
    page.wait_for_function("() => window.__states.includes('reconnecting')", timeout=30_000)
    page.wait_for_function(
        "() => window.__states.slice(window.__states.indexOf('reconnecting'))"
        ".includes('listening')",
        timeout=30_000,
    )
    # the session goes on after the resume: more finals arrive
    page.wait_for_function(
        f"() => document.querySelectorAll('#finals li:not(.gap)').length >= {before + 3}",
        timeout=60_000,
    )
    assert page.locator("#finals li.gap").count() == 0  # resumed, not a new server session
    page.click("#stop")
    page.wait_for_selector("#summary:not([hidden])", timeout=30_000)
    page.wait_for_selector('#status[data-state="idle"]')
    states = page.evaluate("window.__states")
    assert "error" not in states, states
    shown = finals(page)
    with page.expect_download() as download:
        page.click("#download-json")
    data = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    summary = [e["text"] for e in data["transcript"]]  # the server's final_summary
    assert len(summary) >= before + 3
    assert sorted(shown) == sorted(summary), (shown, summary)  # each final exactly once
    assert len({e["segment_id"] for e in data["transcript"]}) == len(summary)
    assert not errors, errors


def test_stop_while_reconnecting_ends_with_what_was_received(
    proxied: tuple[Any, Any, Any], browser: Any
) -> None:
    """The server is gone for good: the page keeps reconnecting; a stop ends it cleanly."""
    fake, proxy, portal = proxied
    page = browser.new_page()
    page.add_init_script(STATE_PROBE)
    page.goto(f"http://127.0.0.1:{proxy.port}/")
    page.wait_for_function("() => document.getElementById('token-field').hidden === true")
    page.click("#start")
    page.wait_for_selector('#status[data-state="listening"]', timeout=60_000)
    page.wait_for_function(
        "() => document.querySelectorAll('#finals li').length >= 1", timeout=60_000
    )
    fake.kill()
    portal.call(proxy.cut)
    page.wait_for_selector('#status[data-state="reconnecting"]', timeout=30_000)
    received = finals(page)
    assert page.is_enabled("#stop") and page.is_disabled("#start")
    page.click("#stop")
    page.wait_for_selector('#status[data-state="idle"]', timeout=10_000)
    assert page.is_hidden("#error")
    assert finals(page)[: len(received)] == received
    assert page.is_enabled("#start") and page.is_enabled("#download-md")
