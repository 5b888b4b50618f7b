"""The token bucket (core.ratelimit): exact cases, and the bound it promises over any sequence of times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.ratelimit import PRUNE_FLOOR, KeyedBuckets, TokenBucket, take_all

EPSILON = 1e-6  # float rounding in the refill; far below one token


def test_starts_full_then_refuses():
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    assert [bucket.allow(100.0) for _ in range(4)] == [True, True, True, False]


def test_refills_at_the_rate():
    bucket = TokenBucket(rate_per_s=2.0, burst=1)
    assert bucket.allow(0.0)
    assert not bucket.allow(0.4)  # 0.8 of a token
    assert bucket.allow(0.5)
    assert not bucket.allow(0.5)
    assert bucket.allow(1.0)


def test_a_long_pause_refills_only_up_to_the_burst():
    bucket = TokenBucket(rate_per_s=10.0, burst=5)
    for _ in range(5):
        assert bucket.allow(0.0)
    assert sum(bucket.allow(3600.0) for _ in range(20)) == 5


def test_a_clock_going_back_refills_nothing():
    bucket = TokenBucket(rate_per_s=1.0, burst=1)
    assert bucket.allow(10.0)
    assert not bucket.allow(5.0)
    assert not bucket.allow(10.5)  # measured from 10.0, not from 5.0
    assert bucket.allow(11.0)


def test_a_steady_caller_below_the_rate_is_never_refused():
    bucket = TokenBucket(rate_per_s=50.0, burst=1)
    assert all(bucket.allow(1000.0 + i * 0.021) for i in range(1000))


@pytest.mark.parametrize("rate, burst", [(0.0, 1), (-1.0, 1), (1.0, 0)])
def test_rejects_impossible_parameters(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


rates = st.floats(min_value=0.01, max_value=1000.0)
bursts = st.integers(min_value=1, max_value=200)


@given(
    rates,
    bursts,
    st.floats(min_value=0.0, max_value=1e6),
    st.lists(st.floats(min_value=0.0, max_value=5.0), max_size=300),
)
def test_accepted_never_exceeds_burst_plus_rate_times_elapsed(rate, burst, start, gaps):
    bucket = TokenBucket(rate, burst)
    now, accepted = start, 0
    for gap in [0.0, *gaps]:
        now += gap
        accepted += bucket.allow(now)
        assert accepted <= burst + rate * (now - start) + EPSILON


@given(rates, bursts, st.lists(st.floats(min_value=0.0, max_value=1000.0), min_size=1, max_size=300))
def test_the_bound_holds_for_times_in_any_order(rate, burst, times):
    bucket = TokenBucket(rate, burst)
    accepted = sum(bucket.allow(t) for t in times)
    assert accepted <= burst + rate * (max(times) - times[0]) + EPSILON


@given(rates, bursts, st.lists(st.floats(min_value=0.0, max_value=5.0), max_size=100))
def test_a_full_burst_is_always_accepted_after_a_long_enough_pause(rate, burst, gaps):
    bucket = TokenBucket(rate, burst)
    now = 0.0
    for gap in gaps:
        now += gap
        bucket.allow(now)
    now += burst / rate + 1.0
    assert all(bucket.allow(now) for _ in range(burst))


def test_a_cost_takes_that_many_tokens_or_none():
    bucket = TokenBucket(rate_per_s=1.0, burst=5)
    assert bucket.allow(0.0, cost=4)
    assert not bucket.allow(0.0, cost=2)  # one left: refused whole, nothing taken
    assert bucket.allow(0.0, cost=1)


def test_keyed_buckets_are_independent_and_forget_only_refilled_ones():
    buckets = KeyedBuckets(rate_per_s=1.0, burst=2)
    assert buckets.allow("a", 0.0) and buckets.allow("a", 0.0) and not buckets.allow("a", 0.0)
    assert buckets.allow("b", 0.0)
    for n in range(3 * PRUNE_FLOOR):  # each new key refills by the time the map is pruned
        buckets.allow(n, float(n))
    assert len(buckets) <= 2 * PRUNE_FLOOR
    assert buckets.allow("a", 10_000.0) and buckets.allow("a", 10_000.0) and not buckets.allow("a", 10_000.0)


def test_keyed_buckets_never_forget_a_bucket_that_is_still_empty():
    buckets = KeyedBuckets(rate_per_s=0.001, burst=1)
    assert buckets.allow("busy", 0.0)
    for n in range(3 * PRUNE_FLOOR):
        buckets.allow(n, 1.0)
    assert not buckets.allow("busy", 2.0)


def test_take_all_charges_every_bucket_or_none():
    turns, bytes_ = KeyedBuckets(rate_per_s=0.001, burst=2), KeyedBuckets(rate_per_s=0.001, burst=100)
    assert take_all([(bytes_, 60), (turns, 1)], "s", 0.0) is None
    assert take_all([(bytes_, 60), (turns, 1)], "s", 0.0) is bytes_  # 40 bytes left: refused...
    assert take_all([(bytes_, 40), (turns, 1)], "s", 0.0) is None  # ...and it took no turn
    assert take_all([(turns, 1)], "s", 0.0) is turns
    assert take_all([(bytes_, 101)], "other", 0.0) is bytes_  # over the burst, even for a new key
