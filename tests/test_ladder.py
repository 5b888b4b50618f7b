"""core.ladder: the rungs of a turn, and a climb down them with breakers over injected time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from core.breaker import Breakers, BreakerState
from core.budget import NPC_BUDGET
from core.ladder import EMBEDDED, LINES, Climb, rungs


def test_rungs_of_a_turn_within_budget():
    assert rungs(["a", "b"], cheaper=["c"], over_budget=None, embedded=True, lines=True) == ("a", "b", EMBEDDED, LINES)
    assert rungs(["a"], cheaper=None, over_budget=None, embedded=False, lines=False) == ("a",)


def test_past_a_budget_the_cheaper_tier_stands_in_for_the_tier():
    assert rungs(["a", "b"], cheaper=["c"], over_budget=NPC_BUDGET, embedded=True, lines=True) == ("c", EMBEDDED, LINES)
    assert rungs(["a"], cheaper=None, over_budget=NPC_BUDGET, embedded=False, lines=True) == (LINES,)
    assert rungs(["a"], cheaper=None, over_budget=NPC_BUDGET, embedded=False, lines=False) == ()


def test_first_rung_answers():
    climb = Climb(("a", "b"), Breakers(1, 10))
    assert climb.next(0.0) == "a"
    climb.answered()
    assert climb.fallback() is None


def test_a_failure_steps_down_and_opens_the_breaker():
    breakers = Breakers(1, 10)
    climb = Climb(("a", "b", LINES), breakers)
    assert climb.next(0.0) == "a"
    climb.failed(0.0)
    assert breakers["a"].state is BreakerState.OPEN
    assert climb.next(0.0) == "b"
    climb.answered()
    assert climb.fallback() == {"why": "endpoint_failed", "rung": 1}


def test_an_open_breaker_is_skipped_at_once():
    breakers = Breakers(1, 10)
    breakers["a"].failed(0.0)
    climb = Climb(("a", "b"), breakers)
    assert climb.next(1.0) == "b"
    climb.failed(1.0)
    assert climb.next(1.0) is None
    assert climb.fallback() == {"why": "breaker_open", "rung": 1}  # the last tried


def test_the_lines_need_no_breaker():
    breakers = Breakers(1, 10)
    climb = Climb(("a", LINES), breakers)
    assert climb.next(0.0) == "a"
    climb.failed(0.0)
    assert climb.next(0.0) == LINES
    climb.abandoned()  # nothing to release
    assert climb.fallback() == {"why": "endpoint_failed", "rung": 1}


def test_past_a_budget_the_why_is_the_budget():
    climb = Climb((LINES,), Breakers(1, 10), over_budget=NPC_BUDGET)
    assert climb.next(0.0) == LINES
    assert climb.fallback() == {"why": NPC_BUDGET, "rung": 0}


def test_an_abandoned_probe_frees_the_probe():
    breakers = Breakers(1, 1)
    breakers["a"].failed(0.0)
    climb = Climb(("a",), breakers)
    assert climb.next(1.0) == "a"  # the probe
    assert not breakers["a"].admit(1.0)
    climb.abandoned()
    assert breakers["a"].admit(1.0)


def test_no_rungs_no_answer():
    climb = Climb((), Breakers(1, 1))
    assert climb.next(0.0) is None
    climb.abandoned()


@given(st.lists(st.sampled_from(["a", "b", "c"]), unique=True), st.sets(st.sampled_from(["a", "b", "c"])))
def test_a_climb_tries_each_admitted_rung_once_in_order(order, down):
    """Failing every rung, a climb tries exactly the rungs whose breakers are closed, in order."""
    breakers = Breakers(1, 100)
    for endpoint in down:
        breakers[endpoint].failed(0.0)
    climb = Climb((*order, LINES), breakers)
    tried = []
    while (rung := climb.next(1.0)) is not None:
        tried.append(rung)
        if rung != LINES:
            climb.failed(1.0)
    assert tried == [*(e for e in order if e not in down), LINES]
    first_down = bool(order) and order[0] in down
    assert climb.fallback() == (
        {"why": "breaker_open" if first_down else "endpoint_failed", "rung": len(order)} if order else None
    )
