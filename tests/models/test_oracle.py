"""The label-delay oracle never sees a label early; trailing AP and the time to recover."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import oracle
from models.extra_features import LABEL_DELAY_COLUMN
from models.oracle import (
    daily_ap,
    event_seconds,
    label_delay_oracle,
    label_known_at,
    time_to_recover,
)
from models.recipe import Recipe
from models.trainer import frame_from_simulator

TINY = Recipe(train_weeks=1, hidden=(8,), n_bins=4, n_members=1, max_epochs=2, patience=1)
START, END = 30, 33


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return frame_from_simulator(customers=200, terminals=400, days=36)


@pytest.fixture(scope="module")
def scores(frame: pd.DataFrame) -> np.ndarray:
    return label_delay_oracle(frame, START, END, recipe=TINY)


def poisoned(frame: pd.DataFrame, day: int) -> pd.DataFrame:
    """``frame`` with the labels flipped of every row not yet known at ``day`` 00:00."""
    unknown = label_known_at(frame) > day * 86400
    out = frame.copy()
    out.loc[unknown, "TX_FRAUD"] = 1 - out.loc[unknown, "TX_FRAUD"]
    return out


def test_labels_are_known_a_delay_after_the_event() -> None:
    frame = pd.DataFrame({
        "TX_TIME_DAYS": [3, 3, 3],
        "TX_DATETIME": pd.to_datetime(["2018-04-04 00:00:00", "2018-04-04 00:00:01",
                                       "2018-04-04 12:00:00"]),
    })
    np.testing.assert_array_equal(label_known_at(frame) / 86400, [10, 10 + 1 / 86400, 10.5])
    frame[LABEL_DELAY_COLUMN] = [7.0, 7.0, 14.0]
    assert label_known_at(frame)[2] / 86400 == 17.5


def test_event_time_column_stands_in_for_tx_datetime() -> None:
    frame = pd.DataFrame({"TX_TIME_DAYS": [0, 2], "event_time": [1.7e9 + 60, 1.7e9 + 3600]})
    of_day = np.mod([1.7e9 + 60, 1.7e9 + 3600], 86400)
    np.testing.assert_allclose(event_seconds(frame), [0, 2 * 86400] + of_day)
    with pytest.raises(ValueError, match="event times"):
        event_seconds(frame.drop(columns="event_time"))


def test_scores_only_the_days_asked_for(frame: pd.DataFrame, scores: np.ndarray) -> None:
    days = frame["TX_TIME_DAYS"].to_numpy()
    inside = (days >= START) & (days < END)
    assert np.isfinite(scores[inside]).all()
    assert np.isnan(scores[~inside]).all()
    assert ((scores[inside] > 0) & (scores[inside] < 1)).all()


def test_is_deterministic_for_a_seed(frame: pd.DataFrame, scores: np.ndarray) -> None:
    days: list[int] = []
    again = label_delay_oracle(frame, START, END, recipe=TINY,
                               progress=lambda day, n: days.append(day))
    np.testing.assert_array_equal(again, scores)
    assert days == list(range(START, END))
    other = label_delay_oracle(frame, START, START + 1, recipe=TINY, seed=1)
    first = frame["TX_TIME_DAYS"].to_numpy() == START
    assert not np.array_equal(other[first], scores[first])


def test_never_uses_a_label_before_it_is_known(frame: pd.DataFrame,
                                                scores: np.ndarray) -> None:
    # Labels unknown at the last day are unknown at every earlier day too.
    changed = poisoned(frame, END - 1)
    assert (changed["TX_FRAUD"] != frame["TX_FRAUD"]).sum() > 1000
    np.testing.assert_array_equal(label_delay_oracle(changed, START, END, recipe=TINY), scores)
    # Nor does a day use labels that become known only on a later day.
    first = frame["TX_TIME_DAYS"].to_numpy() == START
    early = label_delay_oracle(poisoned(frame, START), START, START + 1, recipe=TINY)
    np.testing.assert_array_equal(early[first], scores[first])


def test_the_leak_check_catches_labels_known_at_event_time(
    frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check above would fail for an oracle that knew a label as soon as it happened.
    changed = poisoned(frame, END - 1)
    monkeypatch.setattr(oracle, "label_known_at", event_seconds)
    leaky = label_delay_oracle(frame, START, END, recipe=TINY)
    assert not np.array_equal(label_delay_oracle(changed, START, END, recipe=TINY), leaky)


def test_daily_epochs_and_warm_start(frame: pd.DataFrame, scores: np.ndarray) -> None:
    short = label_delay_oracle(frame, START, END, recipe=TINY, daily_epochs=1)
    first = frame["TX_TIME_DAYS"].to_numpy() == START
    later = (frame["TX_TIME_DAYS"].to_numpy() > START) & np.isfinite(scores)
    np.testing.assert_array_equal(short[first], scores[first])  # a cold first day: full
    assert not np.array_equal(short[later], scores[later])
    with pytest.raises(ValueError, match="daily_epochs"):
        label_delay_oracle(frame, START, END, recipe=TINY, daily_epochs=0)


def test_first_day_without_known_labels_fails(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="no model to start from"):
        label_delay_oracle(frame, 5, 6, recipe=TINY)


def test_daily_ap_pools_the_trailing_window() -> None:
    days = np.array([0, 0, 1, 1, 2, 2, 2])
    labels = np.array([1, 0, 0, 0, 0, 1, 0])
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.4, np.nan])
    single = daily_ap(scores, labels, days, window_days=1)
    assert single.index.tolist() == [0, 1, 2]
    assert single[0] == 1.0 and np.isnan(single[1]) and single[2] == 1.0
    pooled = daily_ap(scores, labels, days, window_days=2)
    # Day 1 pools days 0 and 1: the fraud at 0.9 ranks first.
    assert pooled[1] == 1.0
    # Day 2 pools days 1 and 2: the fraud at 0.4 ranks behind 0.8; the NaN row is left out.
    assert pooled[2] == pytest.approx(1 / 2)
    assert daily_ap(scores, labels, days, window_days=3)[2] == pytest.approx((1 + 2 / 3) / 2)


def synthetic(served_ap: list[float], oracle_ap: list[float]) -> tuple[np.ndarray, ...]:
    """Rows whose single-day AP is exactly the given value per day (1/k: the fraud ranks k)."""
    served, oracle_scores, labels, days = [], [], [], []
    for day, (s, o) in enumerate(zip(served_ap, oracle_ap, strict=True)):
        for ap, out in ((s, served), (o, oracle_scores)):
            rank = round(1 / ap)
            out.extend([0.5, *[0.9] * (rank - 1), *[0.1] * (10 - rank)])
        labels.extend([1] + [0] * 9)
        days.extend([day] * 10)
    return np.array(served), np.array(oracle_scores), np.array(labels), np.array(days)


def test_time_to_recover_finds_the_day_after_the_last_failure() -> None:
    served, best, labels, days = synthetic([1, 1 / 4, 1 / 2, 1, 1 / 2, 1, 1],
                                           [1, 1, 1, 1, 1, 1, 1])
    found = time_to_recover(served, best, labels, days, start_day=1, window_days=1)
    assert (found.day, found.days_after) == (5, 4)
    assert found.served.tolist() == pytest.approx([1, 1 / 4, 1 / 2, 1, 1 / 2, 1, 1])
    assert found.oracle.tolist() == [1] * 7
    assert time_to_recover(served, best, labels, days, start_day=5, window_days=1).days_after == 0


def test_time_to_recover_is_none_when_the_last_day_fails() -> None:
    served, best, labels, days = synthetic([1, 1, 1, 1 / 2], [1, 1, 1, 1])
    found = time_to_recover(served, best, labels, days, start_day=0, window_days=1)
    assert found.days_after is None and found.day is None


def test_time_to_recover_honours_the_tolerance() -> None:
    served, best, labels, days = synthetic([1 / 2, 1 / 2, 1 / 2], [1 / 2, 1, 1 / 2])
    # Day 1 is at half the oracle's AP: it fails a 10 % tolerance but passes one of 50 %.
    assert time_to_recover(served, best, labels, days, 0, window_days=1).days_after == 2
    assert time_to_recover(served, best, labels, days, 0, tolerance=0.5,
                           window_days=1).days_after == 0


def test_time_to_recover_compares_only_rows_both_scored() -> None:
    served, best, labels, days = synthetic([1 / 4, 1, 1], [1, 1, 1])
    best[days == 0] = np.nan  # the oracle starts on day 1
    found = time_to_recover(served, best, labels, days, 0, window_days=2)
    assert np.isnan(found.served[0]) and found.days_after == 0
