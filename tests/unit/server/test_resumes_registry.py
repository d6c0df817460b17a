"""``ResumableSessions``: several sessions may share a client-made id; each leaves cleanly."""

from __future__ import annotations

from echopanel.server.resumes import ResumableSessions


def test_sessions_under_one_id_are_all_candidates_until_discarded():
    reg: ResumableSessions[str] = ResumableSessions()
    reg.add("s1", "a")
    reg.add("s1", "b")
    reg.add("s1", "a")  # once only
    assert reg.candidates("s1") == ["a", "b"] and len(reg) == 2
    reg.discard("s1", "a")
    assert reg.candidates("s1") == ["b"]
    reg.discard("s1", "b")
    reg.discard("s1", "b")  # idempotent
    reg.discard("nope", "x")
    assert reg.candidates("s1") == [] and len(reg) == 0
