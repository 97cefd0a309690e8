"""The cost ledger: persistence across runs, idempotent batch charges, and a budget check that is a real bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_gen.config import Price
from data_gen.errors import BudgetExhausted, ConfigError
from data_gen.estimate import prompt_tokens
from data_gen.ledger import Ledger, prompt_token_bound
from data_gen.row_workflow import ChatRequest

PRICES = {"m": Price(input_per_million=2.0, output_per_million=6.0)}


def test_spend_persists_across_runs_and_batch_keys_are_charged_once(tmp_path):
    path = tmp_path / "t.ledger.jsonl"
    ledger = Ledger(PRICES, path=path)
    assert ledger.charge("m", 1000, 500, batch=False, row_id="a") == pytest.approx(0.005)
    ledger.charge("m", 1000, 500, batch=True, row_id="b", key="job1:b")
    ledger.close()
    again = Ledger(PRICES, budget=1.0, path=path)
    assert again.spent == pytest.approx(0.0075) and again.spent_this_run == 0
    assert again.charged("job1:b") and not again.charged("job1:a")
    assert again.by_model["m"] == {"requests": 2, "prompt_tokens": 2000, "completion_tokens": 1000, "gbp": pytest.approx(0.0075)}


def test_reservations_hold_budget_for_requests_in_flight():
    ledger = Ledger(PRICES, budget=0.01)
    ledger.reserve(0.006)
    with pytest.raises(BudgetExhausted, match="budget £0.0100 reached"):
        ledger.reserve(0.006)
    ledger.release(0.006)
    ledger.reserve(0.006)
    ledger.charge("m", 0, 1000, batch=False, row_id="x")  # 0.006 spent
    ledger.release(0.006)
    with pytest.raises(BudgetExhausted):
        ledger.reserve(0.005)
    assert Ledger(PRICES).remaining() == float("inf")


def test_an_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="no price for model 'x' in the price table \\(known: m\\)"):
        Ledger(PRICES).price("x")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=200), min_size=1, max_size=4), st.sampled_from(["v3", "tekken"]))
def test_the_prompt_bound_is_never_below_the_real_token_count(texts, kind):
    roles = ["system", *(["user", "assistant"] * 3)][: len(texts)]
    if roles[-1] != "user":
        roles.append("user")
        texts = [*texts, "?"]
    messages = tuple({"role": r, "content": t or "."} for r, t in zip(roles, texts))
    assert prompt_token_bound(messages) >= prompt_tokens(ChatRequest("m", messages, 1, 0.0), kind)
