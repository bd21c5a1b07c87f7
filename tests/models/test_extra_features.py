from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.extra_features import (
    CARD_MEAN_DAYS,
    CARD_RECENT_DAYS,
    EXTRA_FEATURE_COLUMNS,
    HORIZON_DAYS,
    MODEL_FEATURE_COLUMNS,
    SERVING_NAMES,
    add_extra_features,
    add_model_features,
)
from models.reference_features import FEATURE_COLUMNS
from models.simulator import simulate

DELAY = pd.Timedelta(days=7)


@pytest.fixture(scope="module")
def tiny() -> pd.DataFrame:
    """100 customers, 200 terminals, 45 days: a few thousand rows with frauds of every kind."""
    return simulate(n_customers=100, n_terminals=200, nb_days=45)


@pytest.fixture(scope="module")
def tied(tiny: pd.DataFrame) -> pd.DataFrame:
    """The tiny simulation with timestamps floored to the hour, so many rows tie."""
    df = tiny.copy()
    df["TX_DATETIME"] = df["TX_DATETIME"].dt.floor("h")
    return df


@pytest.fixture(scope="module")
def stretched(tied: pd.DataFrame) -> pd.DataFrame:
    """The tied rows spread over 135 days, so that the 90-day and 60-day limits bite."""
    df = tied.copy()
    start = df["TX_DATETIME"].min().normalize()
    df["TX_DATETIME"] = start + (df["TX_DATETIME"] - start) * 3
    return df


def slow_extra_features(df: pd.DataFrame) -> pd.DataFrame:
    """Each definition of EXTRA_FEATURE_COLUMNS, evaluated row by row."""
    rows = df.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    times = list(rows["TX_DATETIME"])
    day = [t.normalize() for t in times]
    amount = rows["TX_AMOUNT"].to_numpy()
    fraud = rows["TX_FRAUD"].to_numpy()
    card, terminal = rows["CUSTOMER_ID"].to_numpy(), rows["TERMINAL_ID"].to_numpy()
    card_rows: dict[int, list[int]] = {}
    terminal_rows: dict[int, list[int]] = {}
    ratio: list[float] = []
    out: dict[str, list[float]] = {name: [] for name in EXTRA_FEATURE_COLUMNS}

    def days_between(i: int, j: int) -> float:
        return float(min((day[i] - day[j]).days, HORIZON_DAYS))

    for i, t in enumerate(times):
        history = card_rows.setdefault(card[i], [])
        history.append(i)
        window = [j for j in history if times[j] > t - pd.Timedelta(days=CARD_MEAN_DAYS)]
        cents = sum(int(round(amount[j] * 100)) for j in window)
        mean = cents / len(window) / 100
        ratio.append(amount[i] / mean if mean > 0 else 1.0)
        out["CUSTOMER_ID_AMOUNT_RATIO_90DAY"].append(ratio[i])
        recent = [
            amount[j] for j in history[:-1] if times[j] > t - pd.Timedelta(days=CARD_RECENT_DAYS)
        ]
        out["CUSTOMER_ID_MAX_PREV_AMOUNT_RATIO_14DAY"].append(
            max(recent) / (mean if mean > 0 else 1.0) if recent else 0.0
        )

        known = [j for j in terminal_rows.get(terminal[i], []) if times[j] <= t - DELAY]
        run: list[int] = []
        for j in reversed(known):
            if not fraud[j]:
                break
            run.insert(0, j)
        out["TERMINAL_ID_KNOWN_FRAUD_RUN"].append(float(len(run)))
        out["TERMINAL_ID_KNOWN_FRAUD_RUN_DAYS"].append(days_between(i, run[0]) if run else 0.0)
        genuine = [j for j in known if not fraud[j]]
        out["TERMINAL_ID_DAYS_SINCE_KNOWN_GENUINE"].append(
            days_between(i, genuine[-1]) if genuine else float(HORIZON_DAYS)
        )
        terminal_rows.setdefault(terminal[i], []).append(i)
    return pd.DataFrame(out, index=rows.index).loc[df.index]


def _assert_extra_equal(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    for name in EXTRA_FEATURE_COLUMNS:
        np.testing.assert_array_equal(
            actual[name].to_numpy(), expected[name].to_numpy(), err_msg=name
        )


@pytest.mark.parametrize("dataset", ["tiny", "tied", "stretched"])
def test_every_feature_matches_its_definition(dataset: str, request: pytest.FixtureRequest) -> None:
    df = request.getfixturevalue(dataset)
    assert df["TX_FRAUD"].sum() > 50
    if dataset == "tied":
        assert df.duplicated(["CUSTOMER_ID", "TX_DATETIME"]).sum() > 10
        assert df.duplicated(["TERMINAL_ID", "TX_DATETIME"]).sum() > 10
    _assert_extra_equal(add_extra_features(df), slow_extra_features(df))


def test_features_exercise_their_interesting_cases(stretched: pd.DataFrame) -> None:
    out = add_extra_features(stretched)
    assert (out["TERMINAL_ID_KNOWN_FRAUD_RUN"] >= 3).any()
    assert (out["TERMINAL_ID_KNOWN_FRAUD_RUN_DAYS"] >= 14).any()
    assert (out["TERMINAL_ID_DAYS_SINCE_KNOWN_GENUINE"] > 14).any()
    assert (out["TERMINAL_ID_DAYS_SINCE_KNOWN_GENUINE"] == HORIZON_DAYS).any()
    assert (out["TERMINAL_ID_KNOWN_FRAUD_RUN_DAYS"] == HORIZON_DAYS).any()
    assert (out["CUSTOMER_ID_MAX_PREV_AMOUNT_RATIO_14DAY"] > 3).any()


def test_row_order_and_index_do_not_matter(tied: pd.DataFrame) -> None:
    shuffled = tied.sample(frac=1.0, random_state=3)
    shuffled.index = shuffled.index + 1000
    expected = add_extra_features(tied)
    actual = add_extra_features(shuffled)
    assert list(actual.index) == list(shuffled.index)
    expected.index = expected.index + 1000
    _assert_extra_equal(actual, expected.loc[actual.index])


@pytest.mark.parametrize("position", [500, 1500, 2500])
def test_later_rows_never_change_earlier_features(tied: pd.DataFrame, position: int) -> None:
    df = tied.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    before = add_extra_features(df)
    changed = df.copy()
    later = changed.index[position + 1 :]
    rng = np.random.default_rng(position)
    changed.loc[later, "TX_AMOUNT"] = rng.uniform(1, 500, len(later)).round(2)
    changed.loc[later, "TX_FRAUD"] = 1 - changed.loc[later, "TX_FRAUD"]
    changed.loc[later, "CUSTOMER_ID"] = rng.permutation(
        changed.loc[later, "CUSTOMER_ID"].to_numpy()
    )
    after = add_extra_features(changed)
    head = df.index[: position + 1]
    _assert_extra_equal(after.loc[head], before.loc[head])


def test_labels_younger_than_the_delay_are_never_used(tied: pd.DataFrame) -> None:
    df = tied.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    before = add_extra_features(df)
    for position in (700, 1900, 3100):
        row = df.index[position]
        t = df.at[row, "TX_DATETIME"]
        fresh = df["TX_DATETIME"] > t - DELAY
        flipped = df.assign(TX_FRAUD=np.where(fresh, 1 - df["TX_FRAUD"], df["TX_FRAUD"]))
        after = add_extra_features(flipped)
        _assert_extra_equal(after.loc[[row]], before.loc[[row]])


def test_model_columns_are_the_serving_order(tiny: pd.DataFrame) -> None:
    assert sorted(MODEL_FEATURE_COLUMNS) == sorted([*FEATURE_COLUMNS, *EXTRA_FEATURE_COLUMNS])
    card_first = [c for c in MODEL_FEATURE_COLUMNS if c.startswith("CUSTOMER_ID")]
    assert MODEL_FEATURE_COLUMNS[3 : 3 + len(card_first)] == card_first
    assert list(SERVING_NAMES) == MODEL_FEATURE_COLUMNS
    out = add_model_features(tiny)
    values = out[MODEL_FEATURE_COLUMNS].to_numpy(dtype=np.float64)
    assert np.isfinite(values).all()
