from __future__ import annotations

import datetime
from typing import Literal

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from models.evaluation import (
    BASELINE_TRAIN_START,
    Metrics,
    assess,
    card_precision_at_k,
    evaluate_prequential,
    evaluate_split,
    prequential_splits,
    prequential_start,
    remove_known_compromised_cards,
    sklearn_fit_predict,
    train_test_split_by_dates,
)

DAY0 = pd.Timestamp("2018-04-01")


def _transactions(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """Transactions at noon from (day, customer, fraud) tuples."""
    df = pd.DataFrame(rows, columns=["TX_TIME_DAYS", "CUSTOMER_ID", "TX_FRAUD"])
    noon = pd.to_timedelta(df["TX_TIME_DAYS"], unit="D") + pd.Timedelta(hours=12)
    df["TX_DATETIME"] = DAY0 + noon
    df["TRANSACTION_ID"] = np.arange(len(df))
    return df


def _book_train_test_set(
    df: pd.DataFrame, start: pd.Timestamp, delta_train: int, delta_delay: int, delta_test: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The handbook's ``get_train_test_set``, transcribed literally."""
    end = start + datetime.timedelta(days=delta_train)
    train_df = df[(df.TX_DATETIME >= start) & (df.TX_DATETIME < end)]
    test_df = []
    known = set(train_df[train_df.TX_FRAUD == 1].CUSTOMER_ID)
    start_day = train_df.TX_TIME_DAYS.min()
    for day in range(delta_test):
        test_day = df[df.TX_TIME_DAYS == start_day + delta_train + delta_delay + day]
        delay_day = df[df.TX_TIME_DAYS == start_day + delta_train + day - 1]
        known = known.union(set(delay_day[delay_day.TX_FRAUD == 1].CUSTOMER_ID))
        test_df.append(test_day[~test_day.CUSTOMER_ID.isin(known)])
    return train_df.sort_values("TRANSACTION_ID"), pd.concat(test_df).sort_values("TRANSACTION_ID")


def test_known_card_removal_on_hand_made_frame() -> None:
    # Training days 1-2, delay days 3-4, test days 5-7. Test day 5 + i knows the
    # cards defrauded on days [1, 2 + i].
    frauds = {10: 0, 11: 1, 12: 3, 13: 4, 14: 5}  # card -> day of its fraud
    rows = [(day, card, 1) for card, day in frauds.items()]
    rows += [(day, 15, 0) for day in range(5)]
    rows += [(day, card, 0) for day in (5, 6, 7) for card in (10, 11, 12, 13, 14, 15)]
    df = _transactions(rows)

    test = remove_known_compromised_cards(
        df, train_start_day=1, delta_train=2, delta_delay=2, delta_test=3
    )

    kept = sorted(zip(test.TX_TIME_DAYS, test.CUSTOMER_ID, test.TX_FRAUD, strict=True))
    expected = [
        (5, 10, 0), (5, 12, 0), (5, 13, 0), (5, 14, 0), (5, 14, 1), (5, 15, 0),
        (6, 10, 0), (6, 13, 0), (6, 14, 0), (6, 15, 0),
        (7, 10, 0), (7, 14, 0), (7, 15, 0),
    ]  # fmt: skip
    assert kept == expected

    train, split_test = train_test_split_by_dates(df, DAY0 + pd.Timedelta(days=1), 2, 2, 3)
    assert sorted(zip(train.TX_TIME_DAYS, train.CUSTOMER_ID, strict=True)) == [
        (1, 11),
        (1, 15),
        (2, 15),
    ]
    pd.testing.assert_frame_equal(split_test, test.sort_values("TRANSACTION_ID"))


def test_split_equals_literal_book_split(small_transactions: pd.DataFrame) -> None:
    for start, deltas in [("2018-04-20", (7, 7, 7)), ("2018-05-03", (5, 3, 6))]:
        expected = _book_train_test_set(small_transactions, pd.Timestamp(start), *deltas)
        actual = train_test_split_by_dates(small_transactions, start, *deltas)
        for a, e in zip(actual, expected, strict=True):
            pd.testing.assert_frame_equal(a, e)


def _scored_days() -> tuple[pd.DataFrame, np.ndarray]:
    rows = [  # (day, customer, fraud, score)
        (0, 1, 0, 0.9), (0, 1, 1, 0.1), (0, 2, 0, 0.8), (0, 3, 1, 0.8),
        (1, 1, 1, 0.99), (1, 3, 1, 0.3), (1, 4, 1, 0.7), (1, 5, 0, 0.2),
        (2, 4, 1, 0.9), (2, 6, 1, 0.1),
    ]  # fmt: skip
    df = pd.DataFrame(rows, columns=["TX_TIME_DAYS", "CUSTOMER_ID", "TX_FRAUD", "score"])
    df = df.iloc[[9, 4, 0, 7, 2, 5, 1, 8, 3, 6]]  # rows out of day order
    return df, df["score"].to_numpy()


def test_card_precision_at_k_removes_detected_cards() -> None:
    df, scores = _scored_days()
    result = card_precision_at_k(df, scores, k=2)
    # Day 0: card 1 (max 0.9, compromised) and card 2 (0.8, tie with card 3,
    # lower id first) are inspected: 1 of 2. Card 1 is detected.
    # Day 1: card 1 is gone; cards 4 and 3 are inspected, both compromised: 2 of 2.
    # Day 2: card 4 is gone; only card 6 is left: 1 of k = 2.
    assert result.per_day == [0.5, 1.0, 0.5]
    assert result.compromised_cards_per_day == [2, 2, 1]
    assert result.mean == pytest.approx(2 / 3)


def test_card_precision_at_k_without_removal() -> None:
    df, scores = _scored_days()
    result = card_precision_at_k(df, scores, k=2, remove_detected=False)
    # Day 1: cards 1 (0.99) and 4 (0.7); day 2: cards 4 and 6.
    assert result.per_day == [0.5, 1.0, 1.0]
    assert result.compromised_cards_per_day == [2, 3, 2]


def test_assess_matches_sklearn_and_card_precision() -> None:
    df, scores = _scored_days()
    metrics = assess(df, scores, k=2)
    assert metrics.card_precision_at_k == pytest.approx(2 / 3)
    assert 0 < metrics.auc_roc < 1 and 0 < metrics.average_precision <= 1


@pytest.fixture(scope="module")
def baseline_split(main_features: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    return train_test_split_by_dates(main_features, BASELINE_TRAIN_START)


def test_baseline_split_sizes(baseline_split: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    train, test = baseline_split
    assert (len(train), int(train.TX_FRAUD.sum())) == (67_240, 598)
    assert (len(test), int(test.TX_FRAUD.sum())) == (58_264, 385)
    assert test.groupby("TX_TIME_DAYS").TX_FRAUD.sum().tolist() == [55, 60, 56, 56, 59, 58, 41]
    assert sorted(test.TX_TIME_DAYS.unique()) == list(range(129, 136))
    compromised = card_precision_at_k(test, np.zeros(len(test)), remove_detected=False)
    assert compromised.compromised_cards_per_day == [50, 54, 51, 54, 55, 54, 38]


# Handbook section 4.1: (test AUC, AP, CP@100), (training AUC, AP, CP@100).
BASELINE_FIGURES = {
    "logistic regression": (
        LogisticRegression(random_state=0),
        (0.871, 0.606, 0.291),
        (0.892, 0.663, 0.419),
    ),
    "decision tree depth 2": (
        DecisionTreeClassifier(max_depth=2, random_state=0),
        (0.763, 0.496, 0.241),
        (0.802, 0.586, 0.394),
    ),
}


@pytest.mark.parametrize("name", list(BASELINE_FIGURES))
def test_baseline_models_reproduce_handbook(
    name: str, baseline_split: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    estimator, on_test, on_train = BASELINE_FIGURES[name]
    train, test = baseline_split
    fit_predict = sklearn_fit_predict(estimator)
    for frame, expected in [(test, on_test), (train, on_train)]:
        metrics = evaluate_split(fit_predict, train, frame)
        assert list(metrics.as_dict().values()) == pytest.approx(expected, abs=0.002), name


def test_constant_predictor_reference_values(
    baseline_split: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    _, test = baseline_split
    metrics = assess(test, np.full(len(test), 0.5))
    assert list(metrics.as_dict().values()) == pytest.approx([0.5, 0.007, 0.017], abs=0.002)


def test_depth_2_tree_card_precision_without_card_removal(
    baseline_split: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    train, test = baseline_split
    scores = sklearn_fit_predict(DecisionTreeClassifier(max_depth=2, random_state=0))(train, test)
    result = card_precision_at_k(test, scores, remove_detected=False)
    assert result.mean == pytest.approx(0.2857, abs=0.002)


def test_prequential_fold_layout(main_features: pd.DataFrame) -> None:
    assert prequential_start("validation") == pd.Timestamp("2018-07-11")
    assert prequential_start("test") == pd.Timestamp("2018-08-15")
    weeks: dict[Literal["validation", "test"], list[str]] = {
        "validation": ["2018-07-25", "2018-07-18", "2018-07-11", "2018-07-04"],
        "test": ["2018-08-29", "2018-08-22", "2018-08-15", "2018-08-08"],
    }
    sizes = {}
    for mode, first_days in weeks.items():
        folds = prequential_splits(main_features, prequential_start(mode))
        for (train, test), first in zip(folds, first_days, strict=True):
            assert test.TX_DATETIME.min().normalize() == pd.Timestamp(first)
            assert test.TX_DATETIME.max().normalize() == pd.Timestamp(first) + pd.Timedelta(days=6)
            assert train.TX_DATETIME.max() < pd.Timestamp(first) - pd.Timedelta(days=7)
        sizes[mode] = [len(test) for _, test in folds]
    assert sizes["validation"][0] == 58_505
    assert sizes["test"][3] == 58_264


# Handbook section 4.4: prequential (mean, std) of AUC ROC, AP and CP@100.
PREQUENTIAL_FIGURES = [
    ("LR C=1", LogisticRegression(C=1, random_state=0), "test",
     (0.868, 0.623, 0.297), (0.015, 0.016, 0.009)),
    ("DT depth 2", DecisionTreeClassifier(max_depth=2, random_state=0), "test",
     (0.792, 0.542, 0.265), (0.018, 0.031, 0.020)),
    ("DT depth 2", DecisionTreeClassifier(max_depth=2, random_state=0), "validation",
     (0.791, 0.550, 0.256), (0.012, 0.022, 0.014)),
]  # fmt: skip


@pytest.mark.parametrize("name, estimator, mode, mean, std", PREQUENTIAL_FIGURES)
def test_prequential_reproduces_handbook(
    main_features: pd.DataFrame,
    name: str,
    estimator: object,
    mode: Literal["validation", "test"],
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> None:
    fit_predict = sklearn_fit_predict(estimator)
    result = evaluate_prequential(fit_predict, main_features, prequential_start(mode))
    assert len(result.folds) == 4 and all(isinstance(m, Metrics) for m in result.folds)
    assert list(result.mean.as_dict().values()) == pytest.approx(mean, abs=0.002), name
    assert list(result.std.as_dict().values()) == pytest.approx(std, abs=0.002), name
