"""Investigator feedback in the retrainer's inputs: which label counts, for what."""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.feature_log import with_matured_labels
from models.recipe import WEIGHT_COLUMN
from models.trainer import with_feedback
from streams.lifecycle.retrain_inputs import LabelBook
from streams.records import Label

DAY = 86400.0


def _label(tx: int, known_at: float, fraud: int = 1) -> Label:
    return Label(tx_id=tx, card_id=1, terminal_id=2, event_time=0.0, is_fraud=fraud,
                 known_at=known_at)


def test_feedback_is_known_early_for_training_and_never_reaches_the_monitors() -> None:
    book = LabelBook()
    assert book.add([_label(1, 1 * DAY), _label(2, 1 * DAY)], feedback=True) == 2
    assert book.add([_label(1, 7 * DAY), _label(3, 7 * DAY)]) == 2
    log = pd.DataFrame({"tx_id": [1, 2, 3], "event_time": [0.0, 0.0, 0.0]})
    # On day 2 only the verdicts are known: both train, as feedback.
    day2 = with_matured_labels(log, book.records(), 2 * DAY)
    assert day2.set_index("tx_id")["feedback"].to_dict() == {1: True, 2: True}
    # On day 8 the delayed label of 1 has arrived: it counts, not the verdict.
    day8 = with_matured_labels(log, book.records(), 8 * DAY).set_index("tx_id")
    assert day8["feedback"].to_dict() == {1: False, 2: True, 3: False}
    assert day8.loc[1, "known_at"] == 7 * DAY
    # The monitors take the delayed labels alone.
    assert sorted(book.take_matured(log, 8 * DAY)["tx_id"]) == [1, 3]


def test_feedback_rows_carry_their_share_of_the_loss() -> None:
    train = pd.DataFrame({"x": np.arange(900.0)})
    feedback = pd.DataFrame({"x": np.arange(100.0)})
    both = with_feedback(train, feedback, share=0.5)
    weights = both[WEIGHT_COLUMN].to_numpy()
    assert len(both) == 1000
    assert weights[900:].sum() == weights[:900].sum() and (weights[:900] == 1).all()
    quarter = with_feedback(train, feedback, share=0.25)[WEIGHT_COLUMN].to_numpy()
    assert quarter[900:].sum() / quarter.sum() == 0.25
