"""The in-memory replay cache: single use, expiry, bounded size, race safety."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.errors import InfrastructureUnavailable
from airlock.oidc import InMemoryReplayCache


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_first_use_wins_then_replays_until_expiry() -> None:
    clock = Clock()
    cache = InMemoryReplayCache(clock=clock)
    assert cache.consume("github", "a", expires_at=1_060)
    assert not cache.consume("github", "a", expires_at=1_060)
    assert cache.consume("gitlab", "a", expires_at=1_060)  # ids are per issuer
    clock.now = 1_061
    assert cache.consume("github", "a", expires_at=1_200)


def test_expired_entries_are_purged_as_the_cache_grows() -> None:
    clock = Clock()
    cache = InMemoryReplayCache(clock=clock)
    for n in range(1024):
        cache.consume("i", f"old-{n}", expires_at=1_010)
    clock.now = 1_020
    cache.consume("i", "new", expires_at=2_000)
    assert len(cache) == 1


def test_full_of_live_entries_fails_closed() -> None:
    cache = InMemoryReplayCache(max_entries=10, clock=Clock())
    for n in range(10):
        assert cache.consume("i", str(n), expires_at=5_000)
    with pytest.raises(InfrastructureUnavailable, match="replay cache is full"):
        cache.consume("i", "one-more", expires_at=5_000)


def test_concurrent_consumers_exactly_one_wins() -> None:
    cache = InMemoryReplayCache()
    barrier = threading.Barrier(32)
    wins: list[bool] = []

    def consume() -> None:
        barrier.wait()
        wins.append(cache.consume("github", "same-jti", expires_at=9e9))

    threads = [threading.Thread(target=consume) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["github", "gitlab"]), st.text(max_size=8)), max_size=60))
def test_each_id_is_accepted_exactly_once(uses: list[tuple[str, str]]) -> None:
    cache = InMemoryReplayCache(clock=Clock())
    accepted = [pair for pair in uses if cache.consume(*pair, expires_at=10_000)]
    assert sorted(accepted) == sorted(set(uses))
