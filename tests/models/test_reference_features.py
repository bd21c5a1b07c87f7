from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.reference_features import FEATURE_COLUMNS, add_reference_features
from models.simulator import RAW_COLUMNS

HANDBOOK_FEATURES = [
    "TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT",
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
    "TERMINAL_ID_NB_TX_1DAY_WINDOW", "TERMINAL_ID_RISK_1DAY_WINDOW",
    "TERMINAL_ID_NB_TX_7DAY_WINDOW", "TERMINAL_ID_RISK_7DAY_WINDOW",
    "TERMINAL_ID_NB_TX_30DAY_WINDOW", "TERMINAL_ID_RISK_30DAY_WINDOW",
]  # fmt: skip


def pandas_rolling_features(
    df: pd.DataFrame, delay_days: int = 7, windows: tuple[int, ...] = (1, 7, 30)
) -> pd.DataFrame:
    """The handbook's groupby + time-based rolling computation, written plainly.

    Rows are sorted by time with ties in TRANSACTION_ID order (a stable sort),
    which defines which of several equal-timestamp rows are in a window.
    """
    df = df.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    out = df.copy()
    out["TX_DURING_WEEKEND"] = (df["TX_DATETIME"].dt.weekday >= 5).astype(np.int64)
    out["TX_DURING_NIGHT"] = (df["TX_DATETIME"].dt.hour <= 6).astype(np.int64)
    for _, group in df.groupby("CUSTOMER_ID", sort=False):
        amounts = group.set_index("TX_DATETIME")["TX_AMOUNT"]
        for w in windows:
            count = amounts.rolling(f"{w}d").count()
            total = amounts.rolling(f"{w}d").sum()
            out.loc[group.index, f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = count.to_numpy()
            out.loc[group.index, f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = (
                total / count
            ).to_numpy()
    for _, group in df.groupby("TERMINAL_ID", sort=False):
        labels = group.set_index("TX_DATETIME")["TX_FRAUD"].astype(float)
        fraud_delay = labels.rolling(f"{delay_days}d").sum()
        count_delay = labels.rolling(f"{delay_days}d").count()
        for w in windows:
            fraud = labels.rolling(f"{delay_days + w}d").sum() - fraud_delay
            count = labels.rolling(f"{delay_days + w}d").count() - count_delay
            out.loc[group.index, f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = count.to_numpy()
            risk = (fraud / count).fillna(0)
            out.loc[group.index, f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = risk.to_numpy()
    return out


def _assert_features_equal(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    expected = expected.loc[actual.index]
    for column in FEATURE_COLUMNS:
        np.testing.assert_allclose(
            actual[column].to_numpy(dtype=float),
            expected[column].to_numpy(dtype=float),
            rtol=0,
            atol=1e-9,
            err_msg=column,
        )


def _frame(rows: list[tuple[str, int, int, float, int]]) -> pd.DataFrame:
    """Raw transactions from (datetime, customer, terminal, amount, fraud) tuples."""
    df = pd.DataFrame(
        rows, columns=["TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]
    )
    df["TX_DATETIME"] = pd.to_datetime(df["TX_DATETIME"])
    df["TRANSACTION_ID"] = np.arange(len(df))
    seconds = (df["TX_DATETIME"] - pd.Timestamp("2018-04-01")).dt.total_seconds().astype(np.int64)
    df["TX_TIME_SECONDS"] = seconds
    df["TX_TIME_DAYS"] = seconds // 86400
    df["TX_FRAUD_SCENARIO"] = df["TX_FRAUD"]
    return df[list(RAW_COLUMNS)]


def test_feature_columns_follow_the_handbook() -> None:
    assert FEATURE_COLUMNS == HANDBOOK_FEATURES


def test_output_has_raw_then_feature_columns(small_transactions: pd.DataFrame) -> None:
    out = add_reference_features(small_transactions)
    assert list(out.columns) == list(RAW_COLUMNS) + HANDBOOK_FEATURES[1:]
    pd.testing.assert_frame_equal(out[list(RAW_COLUMNS)], small_transactions)


def test_equals_pandas_rolling_on_small_simulation(small_transactions: pd.DataFrame) -> None:
    _assert_features_equal(
        add_reference_features(small_transactions), pandas_rolling_features(small_transactions)
    )


def test_row_order_and_index_of_the_input_are_kept(small_transactions: pd.DataFrame) -> None:
    shuffled = small_transactions.sample(frac=1, random_state=3)
    out = add_reference_features(shuffled)
    assert out.index.equals(shuffled.index)
    expected = add_reference_features(small_transactions).loc[shuffled.index]
    pd.testing.assert_frame_equal(out, expected)


def test_equal_timestamps_count_only_rows_up_to_the_current_one() -> None:
    df = _frame(
        [
            ("2018-04-01 10:00:00", 0, 0, 10.0, 1),
            ("2018-04-01 12:00:00", 0, 0, 20.0, 0),
            ("2018-04-01 12:00:00", 0, 1, 40.0, 0),
            ("2018-04-01 12:00:00", 1, 0, 7.0, 0),
            ("2018-04-02 12:00:00", 0, 0, 30.0, 0),
        ]
    )
    out = add_reference_features(df)
    # Customer 0: rows 1 and 2 share a timestamp; row 1 does not see row 2.
    # Row 4 is exactly one day after them: they sit on the open bound.
    assert out["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [1, 2, 3, 1, 1]
    assert out["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"].tolist() == [10, 15, 70 / 3, 7, 30]
    assert out["CUSTOMER_ID_NB_TX_7DAY_WINDOW"].tolist() == [1, 2, 3, 1, 4]
    _assert_features_equal(out, pandas_rolling_features(df))


def test_terminal_windows_end_delay_days_before_the_transaction() -> None:
    df = _frame(
        [
            ("2018-04-01 12:00:00", 0, 5, 10.0, 1),
            ("2018-04-02 12:00:00", 1, 5, 10.0, 0),
            ("2018-04-08 12:00:00", 2, 5, 10.0, 1),  # exactly 7 days after row 0
            ("2018-04-09 12:00:00", 3, 5, 10.0, 0),  # exactly 7 days after row 1
            ("2018-04-10 12:00:01", 4, 5, 10.0, 0),
        ]
    )
    out = add_reference_features(df)
    # Shifted 1-day window (t - 8 days, t - 7 days]: row 2 sees row 0, row 3 sees
    # row 1 only (row 0 sits on the open bound), row 4 sees nothing. Rows within
    # the last 7 days (row 2 for row 3) are never used.
    assert out["TERMINAL_ID_NB_TX_1DAY_WINDOW"].tolist() == [0, 0, 1, 1, 0]
    assert out["TERMINAL_ID_RISK_1DAY_WINDOW"].tolist() == [0, 0, 1, 0, 0]
    # Shifted 7-day window (t - 14 days, t - 7 days]: rows 0 and 1 for rows 3 and 4.
    assert out["TERMINAL_ID_NB_TX_7DAY_WINDOW"].tolist() == [0, 0, 1, 2, 2]
    assert out["TERMINAL_ID_RISK_7DAY_WINDOW"].tolist() == [0, 0, 1, 0.5, 0.5]
    _assert_features_equal(out, pandas_rolling_features(df))


@pytest.mark.parametrize("when, weekend, night", [
    ("2018-04-07 06:59:59", 1, 1),  # Saturday
    ("2018-04-08 07:00:00", 1, 0),  # Sunday
    ("2018-04-09 00:00:00", 0, 1),  # Monday
    ("2018-04-13 23:59:59", 0, 0),  # Friday
])  # fmt: skip
def test_weekend_and_night_flags(when: str, weekend: int, night: int) -> None:
    out = add_reference_features(_frame([(when, 0, 0, 1.0, 0)]))
    assert out[["TX_DURING_WEEKEND", "TX_DURING_NIGHT"]].iloc[0].tolist() == [weekend, night]


def test_other_delay_and_windows(small_transactions: pd.DataFrame) -> None:
    out = add_reference_features(small_transactions, delay_days=3, windows=(2, 5))
    expected = pandas_rolling_features(small_transactions, delay_days=3, windows=(2, 5))
    for column in [c for c in out.columns if "WINDOW" in c]:
        np.testing.assert_allclose(out[column], expected.loc[out.index, column], rtol=0, atol=1e-9)
