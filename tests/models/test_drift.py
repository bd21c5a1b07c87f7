from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.drift import apply_drift
from models.drift_scenarios import (
    CARD_TESTING_SCENARIO,
    DEFAULT_LABEL_DELAY_DAYS,
    NIGHT_SPREE_SCENARIO,
    label_delays,
)
from models.drift_spec import DriftSpec
from models.extra_features import LABEL_DELAY_COLUMN
from models.reference_features import FEATURE_COLUMNS, add_reference_features
from models.simulator import RAW_COLUMNS, fingerprint, simulate

START = 30

ALL_KINDS = [
    DriftSpec("card_testing", START, duration_days=10, intensity=4),
    DriftSpec("spending_shift", START, intensity=0.5, factor=2.0, frequency=1.5),
    DriftSpec("spending_shift", START, intensity=0.5, factor=0.5, frequency=0.5),
    DriftSpec("label_delay", START, delay_days=14, delay_spread_days=3),
    DriftSpec("night_spree", START, duration_days=10, intensity=3),
]


def _before(df: pd.DataFrame, day: int) -> pd.DataFrame:
    return df[df["TX_TIME_DAYS"] < day].loc[:, list(RAW_COLUMNS)].reset_index(drop=True)


def test_no_spec_is_identity(small_transactions: pd.DataFrame) -> None:
    out = apply_drift(small_transactions, [], seed=123)
    assert out is not small_transactions
    assert fingerprint(out) == fingerprint(small_transactions)
    pd.testing.assert_frame_equal(out, small_transactions, check_exact=True)


@pytest.mark.parametrize("spec", ALL_KINDS, ids=lambda s: f"{s.kind}-{s.factor}")
def test_nothing_before_the_start_day_changes(
    small_transactions: pd.DataFrame, spec: DriftSpec
) -> None:
    out = apply_drift(small_transactions, [spec], seed=1)
    pd.testing.assert_frame_equal(
        _before(out, START), _before(small_transactions, START), check_exact=True
    )
    assert out["TRANSACTION_ID"].tolist() == list(range(len(out)))
    assert out["TX_DATETIME"].is_monotonic_increasing
    assert list(out.columns[: len(RAW_COLUMNS)]) == list(RAW_COLUMNS)


def test_combined_drifts_are_deterministic(small_transactions: pd.DataFrame) -> None:
    first = apply_drift(small_transactions, ALL_KINDS, seed=7)
    again = apply_drift(small_transactions, ALL_KINDS, seed=7)
    other = apply_drift(small_transactions, ALL_KINDS, seed=8)
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    assert not first.equals(other)
    pd.testing.assert_frame_equal(
        _before(first, START), _before(small_transactions, START), check_exact=True
    )
    # Rows added by card testing get the default label delay before the delay step runs.
    assert (label_delays(first)[first["TX_TIME_DAYS"] < START] == DEFAULT_LABEL_DELAY_DAYS).all()


def test_card_testing_adds_small_bursts_in_the_window(small_transactions: pd.DataFrame) -> None:
    spec = DriftSpec("card_testing", START, duration_days=10, intensity=4, burst_size=(8, 12))
    out = apply_drift(small_transactions, [spec], seed=0)
    new = out[out["TX_FRAUD_SCENARIO"] == CARD_TESTING_SCENARIO]
    assert (small_transactions["TX_FRAUD_SCENARIO"] != CARD_TESTING_SCENARIO).all()
    assert len(out) == len(small_transactions) + len(new)
    assert new["TX_FRAUD"].eq(1).all()
    assert new["TX_TIME_DAYS"].between(START, START + 9).all()
    assert set(new["TX_TIME_DAYS"]) == set(range(START, START + 10))
    assert new["TX_AMOUNT"].between(1.0, 5.0).all()
    assert np.allclose(new["TX_AMOUNT"], new["TX_AMOUNT"].round(2))
    bursts = new.groupby(["TX_TIME_DAYS", "CUSTOMER_ID"])
    assert (bursts.size().groupby(level=0).size() == 4).all()  # 4 cards a day
    assert bursts.size().between(8, 12).all()
    span = bursts["TX_DATETIME"].agg(lambda t: (t.max() - t.min()).total_seconds())
    assert (span <= 4 * 3600).all()
    # Each card is tested on terminals it has used.
    used = small_transactions.groupby("CUSTOMER_ID")["TERMINAL_ID"].agg(set)
    assert all(t in used[c] for c, t in zip(new["CUSTOMER_ID"], new["TERMINAL_ID"], strict=True))
    # Existing rows are untouched (same values in the same relative order).
    old = out[out["TX_FRAUD_SCENARIO"] != CARD_TESTING_SCENARIO].drop(columns="TRANSACTION_ID")
    pd.testing.assert_frame_equal(
        old.reset_index(drop=True),
        small_transactions.drop(columns="TRANSACTION_ID").reset_index(drop=True),
        check_exact=True,
    )
    assert (out["TX_DATETIME"] - pd.to_timedelta(out["TX_TIME_SECONDS"], unit="s")).nunique() == 1


def test_night_spree_adds_night_frauds_in_the_window(small_transactions: pd.DataFrame) -> None:
    df = small_transactions
    spec = DriftSpec("night_spree", START, duration_days=10, intensity=4, spree_size=(3, 8))
    out = apply_drift(df, [spec], seed=0)
    new = out[out["TX_FRAUD_SCENARIO"] == NIGHT_SPREE_SCENARIO]
    assert (df["TX_FRAUD_SCENARIO"] != NIGHT_SPREE_SCENARIO).all()
    assert len(out) == len(df) + len(new)
    assert new["TX_FRAUD"].eq(1).all()
    assert set(new["TX_TIME_DAYS"]) == set(range(START, START + 10))
    assert new["TX_TIME_DAYS"].eq(new["TX_TIME_SECONDS"] // 86400).all()
    # Strictly inside the night: 00:00:00..05:59:59 of the row's own day.
    assert (new["TX_TIME_SECONDS"] % 86400 < 6 * 3600).all()
    assert (new["TX_DATETIME"].dt.hour < 6).all()
    origin = (out["TX_DATETIME"] - pd.to_timedelta(out["TX_TIME_SECONDS"], unit="s")).unique()
    assert len(origin) == 1
    assert ((new["TX_DATETIME"].dt.normalize() - origin[0]).dt.days == new["TX_TIME_DAYS"]).all()
    sprees = new.groupby(["TX_TIME_DAYS", "CUSTOMER_ID"]).size()
    assert (sprees.groupby(level=0).size() == 4).all()  # 4 distinct cards a day
    assert sprees.between(3, 8).all()
    # Amounts: 0.5x to 2x the card's mean genuine amount before the start, below 220.
    assert (new["TX_AMOUNT"] < 220).all() and (new["TX_AMOUNT"] > 0).all()
    assert np.allclose(new["TX_AMOUNT"], new["TX_AMOUNT"].round(2))
    history = df[(df["TX_TIME_DAYS"] < START) & (df["TX_FRAUD"] == 0)]
    usual = history.groupby("CUSTOMER_ID")["TX_AMOUNT"].mean()
    ratio = new["TX_AMOUNT"].to_numpy() / usual[new["CUSTOMER_ID"]].to_numpy()
    capped = new["TX_AMOUNT"].to_numpy() == 219.99
    assert ((ratio >= 0.5 - 1e-3) & ((ratio <= 2.0 + 1e-3) | capped)).all()
    # Terminals come from all terminals, not only the card's own.
    used = df.groupby("CUSTOMER_ID")["TERMINAL_ID"].agg(set)
    assert new["TERMINAL_ID"].isin(df["TERMINAL_ID"]).all()
    foreign = [t not in used[c] for c, t in zip(new["CUSTOMER_ID"], new["TERMINAL_ID"],
                                                 strict=True)]
    assert np.mean(foreign) > 0.9
    # Existing rows are untouched (same values in the same relative order).
    old = out[out["TX_FRAUD_SCENARIO"] != NIGHT_SPREE_SCENARIO].drop(columns="TRANSACTION_ID")
    pd.testing.assert_frame_equal(
        old.reset_index(drop=True), df.drop(columns="TRANSACTION_ID").reset_index(drop=True),
        check_exact=True,
    )


def test_night_spree_caps_amounts_below_scenario_1(small_transactions: pd.DataFrame) -> None:
    rich = small_transactions.assign(TX_AMOUNT=small_transactions["TX_AMOUNT"] * 10)
    out = apply_drift(rich, [DriftSpec("night_spree", START, duration_days=5)], seed=0)
    new = out[out["TX_FRAUD_SCENARIO"] == NIGHT_SPREE_SCENARIO]
    assert (new["TX_AMOUNT"] == 219.99).any()
    assert (new["TX_AMOUNT"] < 220).all()
    assert (new.groupby("TX_TIME_DAYS")["CUSTOMER_ID"].nunique() == 5).all()  # default


def test_night_spree_takes_distinct_cards_a_day(small_transactions: pd.DataFrame) -> None:
    df = small_transactions
    spec = DriftSpec("night_spree", START, duration_days=3, intensity=150)
    new = apply_drift(df, [spec], seed=2).query(f"TX_FRAUD_SCENARIO == {NIGHT_SPREE_SCENARIO}")
    assert (new.groupby("TX_TIME_DAYS")["CUSTOMER_ID"].nunique() == 150).all()
    everyone = DriftSpec("night_spree", START, duration_days=3, intensity=10_000)
    new = apply_drift(df, [everyone], seed=2).query(f"TX_FRAUD_SCENARIO == {NIGHT_SPREE_SCENARIO}")
    with_history = df.loc[(df["TX_TIME_DAYS"] < START) & (df["TX_FRAUD"] == 0), "CUSTOMER_ID"]
    for _, cards in new.groupby("TX_TIME_DAYS")["CUSTOMER_ID"]:
        assert set(cards) == set(with_history)


def test_night_spree_is_deterministic_for_a_seed(small_transactions: pd.DataFrame) -> None:
    spec = DriftSpec.parse("night_spree:start=30,days=10,intensity=5")
    first = apply_drift(small_transactions, [spec], seed=11)
    again = apply_drift(small_transactions, [spec], seed=11)
    other = apply_drift(small_transactions, [spec], seed=12)
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    assert not first.equals(other)
    pd.testing.assert_frame_equal(
        _before(other, START), _before(small_transactions, START), check_exact=True
    )


def test_night_spree_needs_history_before_the_start(small_transactions: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="no card has a genuine transaction"):
        apply_drift(small_transactions, [DriftSpec("night_spree", 0)], seed=0)


def test_spending_shift_moves_affected_mean_by_the_factor(
    small_transactions: pd.DataFrame,
) -> None:
    df = small_transactions
    spec = DriftSpec("spending_shift", START, intensity=0.5, factor=1.5, frequency=1.0)
    out = apply_drift(df, [spec], seed=3)
    assert len(out) == len(df)
    window = df["TX_TIME_DAYS"] >= START
    genuine = df["TX_FRAUD"] == 0
    changed = (out["TX_AMOUNT"] != df["TX_AMOUNT"]).to_numpy()
    affected = set(df.loc[changed, "CUSTOMER_ID"])
    customers = df["CUSTOMER_ID"].nunique()
    assert abs(len(affected) - customers / 2) <= 2
    is_affected = df["CUSTOMER_ID"].isin(affected)
    rows = window & genuine & is_affected
    expected = np.minimum(np.round(df.loc[rows, "TX_AMOUNT"] * 1.5, 2), 220.0)
    np.testing.assert_array_equal(out.loc[rows, "TX_AMOUNT"], expected)
    ratio = out.loc[rows, "TX_AMOUNT"].mean() / df.loc[rows, "TX_AMOUNT"].mean()
    assert ratio == pytest.approx(1.5, rel=0.02)
    untouched = ~rows
    pd.testing.assert_frame_equal(out[untouched], df[untouched], check_exact=True)
    # Labels keep their meaning: no genuine row above 220, no fraud changed.
    assert not ((out["TX_AMOUNT"] > 220) & (out["TX_FRAUD"] == 0)).any()
    assert (out["TX_FRAUD"] == df["TX_FRAUD"]).all()


@pytest.mark.parametrize("frequency", [0.5, 2.0])
def test_spending_shift_changes_the_frequency(
    small_transactions: pd.DataFrame, frequency: float
) -> None:
    df = small_transactions
    spec = DriftSpec("spending_shift", START, intensity=1.0, factor=1.0, frequency=frequency)
    out = apply_drift(df, [spec], seed=4)

    def genuine_in_window(frame: pd.DataFrame) -> int:
        return int(((frame["TX_TIME_DAYS"] >= START) & (frame["TX_FRAUD"] == 0)).sum())

    assert genuine_in_window(out) / genuine_in_window(df) == pytest.approx(frequency, rel=0.05)
    assert out["TX_FRAUD"].sum() == df["TX_FRAUD"].sum()
    assert (out["TX_FRAUD_SCENARIO"].value_counts().drop(0)
            == df["TX_FRAUD_SCENARIO"].value_counts().drop(0)).all()
    assert out["TX_TIME_DAYS"].eq(out["TX_TIME_SECONDS"] // 86400).all()


def test_spending_shift_window_ends(small_transactions: pd.DataFrame) -> None:
    df = small_transactions
    spec = DriftSpec("spending_shift", START, duration_days=5, intensity=1.0, frequency=1.0)
    out = apply_drift(df, [spec], seed=5)
    after = df["TX_TIME_DAYS"] >= START + 5
    pd.testing.assert_frame_equal(out[after], df[after], check_exact=True)


def test_label_delay_column(small_transactions: pd.DataFrame) -> None:
    df = small_transactions
    assert (label_delays(df) == 7.0).all()
    fixed = apply_drift(df, [DriftSpec("label_delay", START, duration_days=10)], seed=0)
    delays = fixed[LABEL_DELAY_COLUMN].to_numpy()
    days = fixed["TX_TIME_DAYS"].to_numpy()
    in_window = (days >= START) & (days < START + 10)
    assert (delays[in_window] == 14.0).all()
    assert (delays[~in_window] == 7.0).all()

    spread = apply_drift(
        df, [DriftSpec("label_delay", START, intensity=0.5, delay_days=10, delay_spread_days=4)],
        seed=0,
    )
    delays = spread[LABEL_DELAY_COLUMN].to_numpy()
    late = spread["TX_TIME_DAYS"].to_numpy() >= START
    assert (delays[~late] == 7.0).all()
    changed = delays[late] != 7.0
    assert changed.mean() == pytest.approx(0.5, abs=0.05)
    assert ((delays[late][changed] >= 10) & (delays[late][changed] <= 14)).all()


def test_parse_spec() -> None:
    spec = DriftSpec.parse("card_testing:start=60,days=30,intensity=5,burst_size=5-20")
    assert spec == DriftSpec("card_testing", 60, 30, 5.0, burst_size=(5, 20))
    assert DriftSpec.parse("label_delay:start=3").level == 1.0
    spree = DriftSpec.parse("night_spree:start=42,days=42,intensity=5,spree_size=2-6")
    assert spree == DriftSpec("night_spree", 42, 42, 5.0, spree_size=(2, 6))
    assert DriftSpec.parse("night_spree:start=42").level == 5.0
    assert DriftSpec.parse("night_spree:start=1").spree_size == (3, 8)
    with pytest.raises(ValueError, match="spree_size"):
        DriftSpec("night_spree", 1, spree_size=(5, 2))
    with pytest.raises(ValueError, match="spree_size"):
        DriftSpec.parse("night_spree:start=1,spree_size=0-3")
    with pytest.raises(ValueError, match="unknown drift kind"):
        DriftSpec.parse("nope:start=1")
    with pytest.raises(ValueError, match="bogus"):
        DriftSpec.parse("label_delay:start=1,bogus=2")
    with pytest.raises(ValueError, match="start"):
        DriftSpec.parse("label_delay:days=2")


def test_card_testing_is_missed_by_a_model_trained_before_it() -> None:
    raw = simulate(n_customers=1000, n_terminals=2000, nb_days=90)
    drifted = apply_drift(raw, [DriftSpec("card_testing", 60, intensity=5)], seed=0)
    frame = add_reference_features(drifted)
    days = frame["TX_TIME_DAYS"].to_numpy()

    def fit(rows: np.ndarray) -> object:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(frame.loc[rows, FEATURE_COLUMNS].to_numpy(), frame.loc[rows, "TX_FRAUD"])
        return model

    before = fit((days >= 30) & (days < 51))
    retrained = fit((days >= 60) & (days < 74))
    test = frame[days >= 81]

    def ap(model: object, scenarios: list[int]) -> float:
        rows = test["TX_FRAUD_SCENARIO"].isin(scenarios) | (test["TX_FRAUD"] == 0)
        scores = model.predict_proba(test.loc[rows, FEATURE_COLUMNS].to_numpy())[:, 1]
        return float(average_precision_score(test.loc[rows, "TX_FRAUD"], scores))

    missed, handbook, caught = ap(before, [4]), ap(before, [1, 2, 3]), ap(retrained, [4])
    assert missed < 0.5 * handbook, (missed, handbook)
    assert missed < 0.5 * caught, (missed, caught)
