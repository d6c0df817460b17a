"""TicketStore: tickets are unguessable, expire, work once, and are bounded in number."""

from __future__ import annotations

import pytest

from echopanel.server.tickets import TicketStore, TicketStoreFull


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_ticket_is_redeemed_once() -> None:
    store = TicketStore(clock=Clock())
    ticket = store.issue()
    assert len(store) == 1
    assert store.redeem(ticket)
    assert not store.redeem(ticket)
    assert len(store) == 0


def test_a_ticket_expires_after_its_ttl() -> None:
    clock = Clock()
    store = TicketStore(ttl=30, clock=clock)
    early, late = store.issue(), store.issue()
    clock.now += 29.9
    assert store.redeem(early)
    clock.now += 0.1  # exactly ttl after issue: expired
    assert not store.redeem(late)
    fresh = store.issue()
    clock.now += 31
    assert not store.redeem(fresh)
    assert len(store) == 0


def test_unknown_empty_and_oversized_tickets_are_refused() -> None:
    store = TicketStore(clock=Clock())
    ticket = store.issue()
    for bogus in (None, "", "x", ticket[:-1], ticket + "x", ticket.upper(), "a" * 10_000):
        assert not store.redeem(bogus)
    assert store.redeem(ticket)  # failed guesses did not spend it


def test_tickets_are_random_and_long() -> None:
    store = TicketStore(capacity=1000, clock=Clock())
    tickets = {store.issue() for _ in range(500)}
    assert len(tickets) == 500
    assert all(len(t) >= 43 and t.isascii() and "/" not in t and "+" not in t for t in tickets)


def test_the_store_is_bounded_and_frees_space_as_tickets_expire_or_are_used() -> None:
    clock = Clock()
    store = TicketStore(ttl=10, capacity=3, clock=clock)
    first = store.issue()
    clock.now += 5
    store.issue()
    store.issue()
    with pytest.raises(TicketStoreFull):
        store.issue()
    assert store.redeem(first)  # using one frees a place
    store.issue()
    with pytest.raises(TicketStoreFull):
        store.issue()
    clock.now += 5.5  # the three issued at t+5 still live
    with pytest.raises(TicketStoreFull):
        store.issue()
    clock.now += 5  # all expired
    assert len(store) == 0
    for _ in range(3):
        store.issue()


def test_the_store_keeps_digests_not_tickets() -> None:
    store = TicketStore(clock=Clock())
    ticket = store.issue()
    assert ticket not in repr(vars(store))


@pytest.mark.parametrize("kwargs", [{"ttl": 0}, {"ttl": -1}, {"capacity": 0}])
def test_invalid_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TicketStore(**kwargs)  # type: ignore[arg-type]
