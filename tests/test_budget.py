"""core.budget: hourly token budgets per session and per NPC, over injected time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.llm_endpoints import Endpoint
from core.budget import HOUR_S, NPC_BUDGET, SESSION_BUDGET, TokenBudgets, estimated_tokens, tokens_of


def test_no_budget_never_runs_out():
    budgets = TokenBudgets(0, 0)
    budgets.charge("s", "a", 10**9, 0.0)
    assert budgets.spent("s", "a", 0.0) is None


def test_an_npc_budget_runs_out_for_that_npc_only():
    budgets = TokenBudgets(0, 100)
    budgets.charge("s", "a", 60, 0.0)
    assert budgets.spent("s", "a", 0.0) is None  # 40 left: the next turn may go
    budgets.charge("s", "a", 60, 0.0)  # that turn left the bucket in debt
    assert budgets.spent("s", "a", 0.0) == NPC_BUDGET
    assert budgets.spent("s", "b", 0.0) is None
    assert budgets.spent("t", "a", 0.0) is None


def test_a_session_budget_covers_all_its_npcs():
    budgets = TokenBudgets(100, 0)
    budgets.charge("s", "a", 50, 0.0)
    budgets.charge("s", "b", 50, 0.0)
    assert budgets.spent("s", "c", 0.0) == SESSION_BUDGET
    assert budgets.spent("t", "c", 0.0) is None


def test_the_npc_budget_is_named_first():
    budgets = TokenBudgets(100, 100)
    budgets.charge("s", "a", 100, 0.0)
    assert budgets.spent("s", "a", 0.0) == NPC_BUDGET
    assert budgets.spent("s", "b", 0.0) == SESSION_BUDGET


def test_a_budget_refills_over_the_hour():
    budgets = TokenBudgets(0, 3600)
    budgets.charge("s", "a", 3600 + 360, 0.0)  # 360 tokens in debt
    assert budgets.spent("s", "a", 360.0) == NPC_BUDGET  # paid back, nothing left yet
    assert budgets.spent("s", "a", 361.0) is None


@given(st.lists(st.tuples(st.integers(0, 500), st.floats(0, 600)), max_size=50))
def test_spending_over_any_run_is_bounded_by_the_hourly_rate(turns):
    """Turns allowed only while the budget is not spent: what they spend, beyond the hour's budget
    and its refill, is at most the one turn that went into debt."""
    budget = 1000
    budgets = TokenBudgets(0, budget)
    now = spent = 0.0
    biggest = 0
    for tokens, step in turns:
        now += step
        if budgets.spent("s", "a", now) is None:
            budgets.charge("s", "a", tokens, now)
            spent += tokens
            biggest = max(biggest, tokens)
    assert spent <= budget + now * budget / HOUR_S + biggest + 1e-6


@pytest.mark.parametrize(
    ("usage", "tokens"),
    [
        (None, 0),
        ({}, 0),
        ({"total_tokens": 12, "prompt_tokens": 5}, 12),
        ({"prompt_tokens": 5, "completion_tokens": 7}, 12),
        ({"prompt_tokens": 5, "completion_tokens": "7"}, 5),
        ({"total_tokens": True, "completion_tokens": 3}, 3),
        ({"total_tokens": -4}, 0),
    ],
)
def test_tokens_of_usage(usage, tokens):
    assert tokens_of(usage) == tokens


def test_an_estimate_for_what_no_provider_counted_rounds_up():
    """A turn cut after text streamed but before the usage came is charged from its characters."""
    assert [estimated_tokens(chars) for chars in (0, 1, 4, 5, -3)] == [0, 1, 1, 2, 0]


def test_an_endpoints_log_label_hides_what_its_key_holds():
    endpoint = Endpoint("https://user:sk-SECRET@api.example/v1?api-key=SECRET2", "gpt")
    assert "SECRET" in endpoint.key  # the breakers' and clients' key, never logged
    assert endpoint.label == "gpt@https://api.example/v1"


def test_two_accounts_on_one_endpoint_are_two_rungs_and_neither_key_shows():
    first, second = (
        Endpoint("https://api.example/v1", "gpt", "sk-first"),
        Endpoint("https://api.example/v1", "gpt", "sk-second"),
    )
    assert first.key != second.key  # each its own client (its own key) and its own breaker
    assert first.key == Endpoint("https://api.example/v1", "gpt", "sk-first").key
    assert "sk-" not in first.key + second.key
    assert first.label == second.label == "gpt@https://api.example/v1"
