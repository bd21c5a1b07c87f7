"""The simulated investigators' choice of cards to review."""

from __future__ import annotations

import numpy as np
import pytest

from streams.lifecycle.investigators import review_cards


def _day(n_cards: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cards = rng.integers(0, n_cards, 5000)
    return cards, rng.beta(0.3, 5.0, 5000)


def test_without_exploration_the_riskiest_cards_by_their_highest_score_are_reviewed() -> None:
    cards, scores = _day()
    review = review_cards(cards, scores, budget=100, explore_share=0.0)
    highest = {c: scores[cards == c].max() for c in np.unique(cards)}
    ranked = sorted(highest, key=lambda c: (-highest[c], c))
    assert list(review.cards) == ranked[:100] and not review.explored.any()


def test_exploration_spends_its_share_on_unsure_and_random_cards_once_each() -> None:
    cards, scores = _day()
    review = review_cards(cards, scores, budget=100, explore_share=0.2,
                          rng=np.random.default_rng(1))
    highest = {c: scores[cards == c].max() for c in np.unique(cards)}
    ranked = sorted(highest, key=lambda c: (-highest[c], c))
    assert len(review) == 100 and len(set(review.cards.tolist())) == 100
    assert list(review.cards[:80]) == ranked[:80] and review.explored.sum() == 20
    explored = review.cards[review.explored]
    assert not set(explored.tolist()) & set(ranked[:80])
    # The unsure half: nearest 0.5 among the cards not ranked in.
    rest = ranked[80:]
    unsure = sorted(rest, key=lambda c: abs(highest[c] - 0.5))[:10]
    assert set(unsure) <= set(explored.tolist())
    again = review_cards(cards, scores, budget=100, explore_share=0.2,
                         rng=np.random.default_rng(1))
    assert list(again.cards) == list(review.cards)


def test_a_budget_larger_than_the_day_reviews_every_card_and_bad_settings_fail() -> None:
    cards, scores = _day(n_cards=30)
    assert len(review_cards(cards, scores, budget=100, explore_share=0.1)) == 30
    with pytest.raises(ValueError):
        review_cards(cards, scores, explore_share=1.5)
