"""Console sessions: creation, idle timeout, sign-out, CSRF tokens, the bound on their number."""

from __future__ import annotations

import pytest

from medserve.console.sessions import SessionStore, new_secret, same_secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_while_used_and_ends_after_the_idle_timeout() -> None:
    clock = Clock()
    store = SessionStore(idle_timeout_s=60, clock=clock)
    session = store.create("msv_token", "alice", "admin")
    assert session.credential == "msv_token" and session.principal == "alice"
    clock.now += 50
    assert store.get(session.id) is session  # touched: the timeout starts again
    clock.now += 50
    assert store.get(session.id) is session
    clock.now += 61
    assert store.get(session.id) is None
    assert len(store) == 0


def test_an_event_stream_does_not_keep_a_session_alive() -> None:
    clock = Clock()
    store = SessionStore(idle_timeout_s=60, clock=clock)
    session = store.create("t", "bob", "viewer")
    for _ in range(5):
        clock.now += 20
        if store.get(session.id, touch=False) is None:
            break
    assert store.get(session.id, touch=False) is None


def test_sign_out_ends_the_session_at_once() -> None:
    store = SessionStore()
    session = store.create("t", "carol", "service")
    assert store.end(session.id) is session
    assert store.get(session.id) is None
    assert store.end(session.id) is None
    assert store.get(None) is None and store.get("") is None and store.get("forged") is None


def test_expire_drops_only_idle_sessions() -> None:
    clock = Clock()
    store = SessionStore(idle_timeout_s=10, clock=clock)
    old = store.create("a", "a", "viewer")
    clock.now += 8
    fresh = store.create("b", "b", "viewer")
    clock.now += 5
    assert [s.id for s in store.expire()] == [old.id]
    assert store.get(fresh.id) is fresh


def test_the_least_recently_used_session_makes_room() -> None:
    clock = Clock()
    store = SessionStore(max_sessions=2, clock=clock)
    first, second = store.create("a", "a", "viewer"), store.create("b", "b", "viewer")
    clock.now += 1
    store.get(first.id)  # first is now the more recently used
    third = store.create("c", "c", "viewer")
    assert store.get(second.id) is None
    assert store.get(first.id) is first and store.get(third.id) is third


def test_csrf_tokens_are_per_session_and_compared_exactly() -> None:
    store = SessionStore()
    one, two = store.create("a", "a", "admin"), store.create("b", "b", "admin")
    assert one.csrf != two.csrf and one.id != two.id and one.csrf != one.id
    assert SessionStore.csrf_ok(one, one.csrf)
    assert not SessionStore.csrf_ok(one, two.csrf)
    assert not SessionStore.csrf_ok(one, one.csrf[:-1])
    assert not SessionStore.csrf_ok(one, "")
    assert not SessionStore.csrf_ok(one, None)


def test_secrets_are_random_and_long() -> None:
    values = {new_secret() for _ in range(100)}
    assert len(values) == 100 and all(len(v) >= 43 for v in values)
    assert same_secret("abc", "abc") and not same_secret("", "") and not same_secret("abc", None)


def test_flashes_are_shown_once() -> None:
    session = SessionStore().create("a", "a", "admin")
    for n in range(7):
        session.flash(f"message {n}")
    assert session.take_flashes() == [f"message {n}" for n in range(2, 7)]
    assert session.take_flashes() == []


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        SessionStore(idle_timeout_s=0)
    with pytest.raises(ValueError):
        SessionStore(max_sessions=0)
