"""Decisions under a daily review budget."""

from __future__ import annotations

import numpy as np
import pytest

from streams.dataplane.scoring import DecisionPolicy, ReviewBudget

DAY = 86400.0


def decide_day(policy: ReviewBudget, scores: np.ndarray, day: int) -> list[str]:
    times = day * DAY + np.linspace(0, DAY - 1, len(scores))
    return [policy.decide(float(s), float(t)) for s, t in zip(scores, times, strict=True)]


def test_the_budget_goes_to_the_riskiest_and_is_never_exceeded() -> None:
    rng = np.random.default_rng(1)
    policy = ReviewBudget(reviews_per_day=50, block_at=0.99, review_at=0.5)
    first = rng.beta(0.3, 8, 10_000)
    decisions = decide_day(policy, first, 0)
    # Day one has no history: fixed threshold, but the budget still caps it.
    assert decisions.count("review") == min(50, int(((first >= 0.5) & (first < 0.99)).sum()))
    second = rng.beta(0.3, 8, 10_000)
    decisions = np.array(decide_day(policy, second, 1))
    reviewed = second[decisions == "review"]
    assert 35 <= len(reviewed) <= 50, "a day like the last one about fills the budget"
    # What is reviewed is the top of the day, not the first comers over a low bar.
    assert reviewed.min() >= np.quantile(second[second < 0.99], 1 - 80 / 10_000)
    assert (decisions == "block").sum() == (second >= 0.99).sum()


def test_a_riskier_day_spends_the_budget_and_approves_the_rest() -> None:
    policy = ReviewBudget(reviews_per_day=10, block_at=1.0)
    decide_day(policy, np.linspace(0, 0.5, 1000), 0)
    decisions = decide_day(policy, np.full(1000, 0.8), 1)
    assert decisions.count("review") == 10
    assert decisions[10:] == ["approve"] * 990


def test_share_splits_the_budget_and_bad_settings_fail() -> None:
    policy = ReviewBudget(reviews_per_day=100, share=0.25, review_at=0.0, block_at=1.0)
    assert decide_day(policy, np.full(200, 0.5), 0).count("review") == 25
    with pytest.raises(ValueError):
        ReviewBudget(reviews_per_day=-1)
    assert DecisionPolicy().decide(0.95, 0.0) == "block"
