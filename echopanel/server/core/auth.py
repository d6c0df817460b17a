"""The token check of the upgrade request (constant time)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

__all__ = ["check_token"]


def check_token(expected: str | None, headers: Mapping[str, str]) -> bool:
    """Constant-time check of ``Authorization: Bearer`` or ``x-echopanel-token``."""
    if expected is None:
        return True
    want = expected.encode()
    auth = headers.get("authorization", "")
    candidates = [headers.get("x-echopanel-token", "")]
    if auth[:7].lower() == "bearer ":
        candidates.append(auth[7:].strip())
    ok = False
    for candidate in candidates:
        ok |= hmac.compare_digest(candidate.encode(), want)
    return ok
