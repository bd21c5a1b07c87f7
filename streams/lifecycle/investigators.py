"""Simulated investigators: the cards the factory sends to review each day, and their verdicts.

The handbook's card precision@100 assumes a fraud team that reviews, every day, the 100
cards the model ranks riskiest, and learns the truth about them that day. In the loop
(``factory run --clock event --feedback``) each scored day goes to :func:`review_cards`,
and the true labels of the reviewed cards' transactions of that day go out on the
``feedback`` topic, known at the end of the day, while every other label still arrives
after its delay. The retrainer trains on both (:func:`models.trainer.train_version`).

Feedback only on what the model already ranks first would teach it little it does not
know: a share of the budget explores. Half of it goes to the cards the model is least
sure about (the day's highest score nearest 0.5), half to cards drawn at random from the
rest of the day's cards, so a pattern the model scores low can still be found.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Review:
    """One day's reviewed cards; ``explored`` marks those not picked for their rank."""

    cards: np.ndarray
    explored: np.ndarray

    def __len__(self) -> int:
        return len(self.cards)


def review_cards(cards: np.ndarray, scores: np.ndarray, budget: int = 100,
                 explore_share: float = 0.1, rng: np.random.Generator | None = None
                 ) -> Review:
    """The cards to review among a day's transactions (``cards`` and ``scores`` per
    transaction): the riskiest by their highest score, and ``explore_share`` of the
    budget spent exploring (see the module). Ties in rank go to the lower card id."""
    if budget < 0 or not 0.0 <= explore_share <= 1.0:
        raise ValueError("budget must be >= 0 and explore_share in [0, 1]")
    rng = rng or np.random.default_rng(0)
    unique, inverse = np.unique(np.asarray(cards), return_inverse=True)
    highest = np.full(len(unique), -np.inf)
    np.maximum.at(highest, inverse, np.asarray(scores, np.float64))
    budget = min(budget, len(unique))
    explore = int(round(budget * explore_share))
    by_rank = np.lexsort((unique, -highest))
    chosen = list(by_rank[:budget - explore])
    rest = by_rank[budget - explore:]
    unsure = rest[np.argsort(np.abs(highest[rest] - 0.5), kind="stable")][:explore // 2]
    chosen += list(unsure)
    others = np.setdiff1d(rest, unsure)
    chosen += list(rng.choice(others, size=min(explore - len(unsure), len(others)),
                              replace=False))
    picked = np.asarray(chosen, np.int64)
    return Review(cards=unique[picked],
                  explored=np.arange(len(picked)) >= budget - explore)
