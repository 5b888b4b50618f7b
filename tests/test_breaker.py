"""core.breaker: a breaker's states over injected time, and a hypothesis model of its promise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.breaker import Breaker, Breakers, BreakerState


def test_closed_until_threshold_failures_in_a_row():
    breaker = Breaker(threshold=3, cooldown_s=10)
    for now in (0.0, 1.0):
        assert breaker.admit(now)
        breaker.failed(now)
        assert breaker.state is BreakerState.CLOSED
    assert breaker.admit(2.0)
    breaker.failed(2.0)
    assert breaker.state is BreakerState.OPEN
    assert not breaker.admit(2.0)
    assert not breaker.admit(11.9)


def test_a_success_resets_the_count():
    breaker = Breaker(threshold=2, cooldown_s=10)
    breaker.failed(0.0)
    breaker.succeeded()
    breaker.failed(1.0)
    assert breaker.state is BreakerState.CLOSED


def test_after_the_cooldown_one_probe_then_closed_on_success():
    breaker = Breaker(threshold=1, cooldown_s=5)
    breaker.failed(0.0)
    assert not breaker.ready_to_probe(4.9)
    assert breaker.ready_to_probe(5.0)
    assert breaker.admit(5.0)
    assert breaker.state is BreakerState.PROBING
    assert not breaker.admit(5.1)  # one probe at a time
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.admit(5.2)


def test_a_failed_probe_reopens_for_a_whole_cooldown():
    breaker = Breaker(threshold=3, cooldown_s=5)
    for now in (0.0, 0.1, 0.2):
        breaker.failed(now)
    assert breaker.admit(6.0)
    breaker.failed(6.5)  # one failure is enough while probing
    assert breaker.state is BreakerState.OPEN
    assert not breaker.admit(11.4)
    assert breaker.admit(11.5)


def test_an_abandoned_probe_lets_the_next_request_probe():
    breaker = Breaker(threshold=1, cooldown_s=1)
    breaker.failed(0.0)
    assert breaker.admit(1.0)
    breaker.abandoned()
    assert breaker.state is BreakerState.OPEN
    assert breaker.admit(1.0)


@pytest.mark.parametrize(("threshold", "cooldown_s"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_bad_parameters_are_refused(threshold, cooldown_s):
    with pytest.raises(ValueError):
        Breaker(threshold, cooldown_s)
    with pytest.raises(ValueError):
        Breakers(threshold, cooldown_s)


def test_breakers_are_one_per_endpoint():
    breakers = Breakers(threshold=1, cooldown_s=1)
    breakers["a"].failed(0.0)
    assert breakers["a"] is breakers["a"]
    assert breakers["a"].state is BreakerState.OPEN
    assert breakers["b"].state is BreakerState.CLOSED


@given(
    threshold=st.integers(1, 4),
    cooldown=st.floats(0.5, 5),
    events=st.lists(st.tuples(st.sampled_from(["ok", "fail", "drop"]), st.floats(0, 3)), max_size=40),
)
def test_model(threshold, cooldown, events):
    """Against a plain model: an open breaker admits nothing before its cooldown, exactly one
    request after it, and only ``threshold`` failures in a row (or a failed probe) open it."""
    breaker = Breaker(threshold, cooldown)
    now, streak, opened_at, probing = 0.0, 0, None, False
    for outcome, step in events:
        now += step
        admitted = breaker.admit(now)
        expected = opened_at is None or (not probing and now - opened_at >= cooldown)
        assert admitted == expected
        if not admitted:
            continue
        probing = opened_at is not None
        if outcome == "ok":
            breaker.succeeded()
            streak, opened_at, probing = 0, None, False
        elif outcome == "fail":
            breaker.failed(now)
            streak += 1
            if probing or streak >= threshold:
                opened_at, probing = now, False
        else:
            breaker.abandoned()
            probing = False
