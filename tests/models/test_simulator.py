from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from models.simulator import (
    RAW_COLUMNS,
    available_terminals,
    customer_profiles,
    fingerprint,
    simulate,
    terminal_profiles,
)

# Fingerprint of the published raw dataset (shared/benchmarks/fingerprint.txt).
PUBLISHED_FINGERPRINT = {
    "rows": 1_754_155,
    "frauds": 14_681,
    "scenario_counts": {0: 1_739_474, 1: 973, 2: 9_077, 3: 4_631},
    "amount_cents_sum": 9_407_937_008,
    "sha256": "5069d858a095166060e2de98b80e94edd2344710ba4657fa0ab842585f61dde4",
}


@pytest.fixture
def global_rngs_restored():
    """Restore numpy's and Python's global RNG states after a test seeds them."""
    np_state, py_state = np.random.get_state(), random.getstate()
    yield
    np.random.set_state(np_state)
    random.setstate(py_state)


def _book_simulation(
    n_customers: int, n_terminals: int, nb_days: int, r: float, **unused: object
) -> pd.DataFrame:
    """A literal transcription of the handbook's simulator, global RNGs and pandas."""
    np.random.seed(0)
    customers = []
    for _ in range(n_customers):
        x, y = np.random.uniform(0, 100), np.random.uniform(0, 100)
        mean_amount = np.random.uniform(5, 100)
        customers.append((x, y, mean_amount, mean_amount / 2, np.random.uniform(0, 4)))
    np.random.seed(1)
    terminals = np.array(
        [[np.random.uniform(0, 100), np.random.uniform(0, 100)] for _ in range(n_terminals)]
    )

    rows = []
    for cid, (x, y, mean_amount, std_amount, nb_tx_per_day) in enumerate(customers):
        distances = np.sqrt(np.sum(np.square(np.array([x, y]) - terminals), axis=1))
        available = list(np.where(distances < r)[0])
        random.seed(cid)
        np.random.seed(cid)
        for day in range(nb_days):
            for _ in range(np.random.poisson(nb_tx_per_day)):
                time_tx = int(np.random.normal(86400 / 2, 20000))
                if 0 < time_tx < 86400:
                    amount = np.random.normal(mean_amount, std_amount)
                    if amount < 0:
                        amount = np.random.uniform(0, mean_amount * 2)
                    amount = np.round(amount, decimals=2)
                    if len(available) > 0:
                        terminal = random.choice(available)
                        rows.append([time_tx + day * 86400, day, cid, terminal, amount])

    columns = ["TX_TIME_SECONDS", "TX_TIME_DAYS", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT"]
    df = pd.DataFrame(rows, columns=columns)
    df["TX_DATETIME"] = pd.to_datetime(df["TX_TIME_SECONDS"], unit="s", origin="2018-04-01")
    df = df.sort_values("TX_DATETIME").reset_index(drop=True)
    df["TRANSACTION_ID"] = np.arange(len(df))
    df["TX_FRAUD"] = 0
    df["TX_FRAUD_SCENARIO"] = 0

    df.loc[df.TX_AMOUNT > 220, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 1]
    terminal_ids = pd.Series(np.arange(n_terminals))
    customer_ids = pd.Series(np.arange(n_customers))
    for day in range(df.TX_TIME_DAYS.max()):
        compromised = terminal_ids.sample(n=2, random_state=day)
        in_window = (df.TX_TIME_DAYS >= day) & (df.TX_TIME_DAYS < day + 28)
        hit = df[in_window & df.TERMINAL_ID.isin(compromised)]
        df.loc[hit.index, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 2]
    for day in range(df.TX_TIME_DAYS.max()):
        compromised = customer_ids.sample(n=3, random_state=day).values
        in_window = (df.TX_TIME_DAYS >= day) & (df.TX_TIME_DAYS < day + 14)
        hit = df[in_window & df.CUSTOMER_ID.isin(compromised)]
        random.seed(day)
        chosen = random.sample(list(hit.index.values), k=int(len(hit) / 3))
        df.loc[chosen, "TX_AMOUNT"] = df.loc[chosen, "TX_AMOUNT"] * 5
        df.loc[chosen, ["TX_FRAUD", "TX_FRAUD_SCENARIO"]] = [1, 3]
    return df[list(RAW_COLUMNS)]


def test_full_size_simulation_reproduces_published_fingerprint() -> None:
    assert fingerprint(simulate()) == PUBLISHED_FINGERPRINT


def test_small_simulation_equals_literal_book_transcription(
    small_parameters: dict[str, object],
    small_transactions: pd.DataFrame,
    global_rngs_restored: None,
) -> None:
    expected = _book_simulation(**small_parameters)  # type: ignore[arg-type]
    assert (expected.TX_FRAUD_SCENARIO == 3).sum() > 0
    pd.testing.assert_frame_equal(small_transactions, expected, check_dtype=False, check_exact=True)


def test_schema_and_dtypes(small_transactions: pd.DataFrame) -> None:
    df = small_transactions
    assert list(df.columns) == list(RAW_COLUMNS)
    assert df["TX_DATETIME"].dtype == "datetime64[ns]"
    assert df["TX_AMOUNT"].dtype == np.float64
    for column in set(RAW_COLUMNS) - {"TX_DATETIME", "TX_AMOUNT"}:
        assert df[column].dtype == np.int64, column
    assert (df["TRANSACTION_ID"].to_numpy() == np.arange(len(df))).all()
    assert df["TX_DATETIME"].is_monotonic_increasing
    assert (df["TX_FRAUD"] == (df["TX_FRAUD_SCENARIO"] > 0)).all()
    assert (df.loc[df["TX_FRAUD"] == 0, "TX_AMOUNT"] <= 220).all()


def test_start_date_is_honoured() -> None:
    df = simulate(n_customers=5, n_terminals=50, nb_days=3, r=50, start_date="2020-01-01")
    seconds = pd.to_timedelta(df["TX_TIME_SECONDS"], unit="s")
    assert (df["TX_DATETIME"] == pd.Timestamp("2020-01-01") + seconds).all()


def test_vectorised_profiles_match_scalar_draws(global_rngs_restored: None) -> None:
    customers = customer_profiles(50, seed=0)
    np.random.seed(0)
    for c in range(50):
        drawn = [
            np.random.uniform(low, high) for low, high in [(0, 100), (0, 100), (5, 100), (0, 4)]
        ]
        assert drawn == [
            customers["x"][c],
            customers["y"][c],
            customers["mean_amount"][c],
            customers["mean_nb_tx_per_day"][c],
        ]
    terminals = terminal_profiles(50, seed=1)
    np.random.seed(1)
    for t in range(50):
        drawn = [np.random.uniform(0, 100), np.random.uniform(0, 100)]
        assert drawn == [terminals["x"][t], terminals["y"][t]]


def test_terminals_per_customer_as_stated_in_handbook() -> None:
    per_customer = available_terminals(customer_profiles(5000), terminal_profiles(10000), 5)
    counts = np.array([len(terminals) for terminals in per_customer])
    assert round(counts.mean(), 1) == 75.2
    assert (counts.min(), counts.max()) == (22, 106)


def test_main_dataset_figures_of_the_handbook(main_transactions: pd.DataFrame) -> None:
    df = main_transactions
    per_day = df.groupby("TX_TIME_DAYS").size()
    assert round(per_day.mean(), 1) == 9585.5
    assert (per_day.min(), per_day.max()) == (9285, 9789)
    assert df["TX_AMOUNT"].max() == 2628.0

    def loaded(first: str, last: str) -> tuple[int, int]:
        end = pd.Timestamp(last) + pd.Timedelta(days=1)
        window = df[(df.TX_DATETIME >= first) & (df.TX_DATETIME < end)]
        return len(window), int(window["TX_FRAUD"].sum())

    assert loaded("2018-07-25", "2018-08-14") == (201_295, 1_792)
    assert loaded("2018-06-11", "2018-09-14") == (919_767, 8_195)


def test_cached_main_dataset_has_published_fingerprint(main_transactions: pd.DataFrame) -> None:
    assert fingerprint(main_transactions) == PUBLISHED_FINGERPRINT
