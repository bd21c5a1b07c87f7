"""Transaction simulator of the Fraud Detection Handbook (Chapter 3.2).

The simulator follows the handbook's reference code to the letter, so that the
main parameters reproduce the published raw dataset bit for bit (rows, labels,
amounts and TRANSACTION_ID order). Everything that does not consume random
numbers in a fixed order is vectorised: profiles, customer-terminal
association, fraud scenarios and the final sort. The per-customer generation
loop keeps the handbook's scalar draw order (numpy poisson, normal, uniform and
Python ``random.choice`` interleaved), which cannot be batched without changing
the numbers.

Fraud scenarios run as an ordered sequence of steps over the complete table
(:data:`FRAUD_SCENARIOS`); a further scenario is another step appended after
scenario 3.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

SECONDS_PER_DAY = 86400

RAW_COLUMNS = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_TIME_SECONDS",
    "TX_TIME_DAYS",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)

_FINGERPRINT_COLUMNS = (
    "TRANSACTION_ID",
    "TX_TIME_SECONDS",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)


@dataclass
class TransactionArrays:
    """Column arrays of the transaction table, in TRANSACTION_ID order.

    Fraud scenarios read and modify these arrays in place.
    """

    tx_days: np.ndarray
    customer_id: np.ndarray
    terminal_id: np.ndarray
    amount: np.ndarray
    fraud: np.ndarray
    scenario: np.ndarray
    n_customers: int
    n_terminals: int


ScenarioStep = Callable[[TransactionArrays], None]


def customer_profiles(n_customers: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw customer locations, spending and frequency profiles.

    The handbook draws, per customer and in order, x ~ U(0,100), y ~ U(0,100),
    mean_amount ~ U(5,100) and mean_nb_tx_per_day ~ U(0,4) from the global
    legacy RNG. Drawing the 4·n uniforms in one block gives the same stream,
    and ``low + (high - low) * u`` is the legacy ``uniform`` formula.
    """
    u = np.random.RandomState(seed).random_sample((n_customers, 4))
    mean_amount = 5.0 + 95.0 * u[:, 2]
    return {
        "x": 0.0 + 100.0 * u[:, 0],
        "y": 0.0 + 100.0 * u[:, 1],
        "mean_amount": mean_amount,
        "std_amount": mean_amount / 2,
        "mean_nb_tx_per_day": 0.0 + 4.0 * u[:, 3],
    }


def terminal_profiles(n_terminals: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Draw terminal locations, x then y per terminal, on the 100×100 grid."""
    u = np.random.RandomState(seed).random_sample((n_terminals, 2))
    return {"x": 0.0 + 100.0 * u[:, 0], "y": 0.0 + 100.0 * u[:, 1]}


def available_terminals(
    customers: dict[str, np.ndarray],
    terminals: dict[str, np.ndarray],
    r: float,
    chunk_size: int = 500,
) -> list[list[int]]:
    """List, per customer, the terminal indices at distance strictly below ``r``.

    The distance is computed as in the handbook, ``sqrt(dx² + dy²) < r``, not
    as ``dx² + dy² < r²``, so that borderline terminals are decided identically.
    """
    tx, ty = terminals["x"], terminals["y"]
    result: list[list[int]] = []
    for start in range(0, len(customers["x"]), chunk_size):
        cx = customers["x"][start : start + chunk_size, None]
        cy = customers["y"][start : start + chunk_size, None]
        within = np.sqrt(np.square(cx - tx) + np.square(cy - ty)) < r
        result.extend(np.flatnonzero(row).tolist() for row in within)
    return result


def _generate_transactions(
    customers: dict[str, np.ndarray], terminals_per_customer: list[list[int]], nb_days: int
) -> tuple[np.ndarray, ...]:
    """Run the per-customer generator; return unsorted, unrounded columns."""
    seconds: list[int] = []
    days: list[int] = []
    customer_ids: list[int] = []
    terminal_ids: list[int] = []
    amounts: list[float] = []
    rs = np.random.RandomState()
    rnd = random.Random()
    # Bound methods and local names: the loop runs about 6 million draws.
    poisson, normal, uniform, choice = rs.poisson, rs.normal, rs.uniform, rnd.choice
    add_second, add_day, add_customer = seconds.append, days.append, customer_ids.append
    add_terminal, add_amount = terminal_ids.append, amounts.append
    means = customers["mean_amount"].tolist()
    stds = customers["std_amount"].tolist()
    lams = customers["mean_nb_tx_per_day"].tolist()
    for cid, (mean, std, lam, terms) in enumerate(
        zip(means, stds, lams, terminals_per_customer, strict=True)
    ):
        rs.seed(cid)
        rnd.seed(cid)
        for day in range(nb_days):
            offset = day * SECONDS_PER_DAY
            for _ in range(poisson(lam)):
                time_tx = int(normal(43200.0, 20000))
                if 0 < time_tx < SECONDS_PER_DAY:
                    amount = normal(mean, std)
                    if amount < 0:
                        amount = uniform(0, mean * 2)
                    if terms:
                        add_terminal(choice(terms))
                        add_second(time_tx + offset)
                        add_day(day)
                        add_customer(cid)
                        add_amount(amount)
    return (
        np.array(seconds, dtype=np.int64),
        np.array(days, dtype=np.int64),
        np.array(customer_ids, dtype=np.int64),
        np.array(terminal_ids, dtype=np.int64),
        np.array(amounts, dtype=np.float64),
    )


def _group_rows(keys: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Return row indices grouped by key (ascending within a group) and group bounds."""
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n_groups + 1))
    return order, bounds


def _rows_in_window(
    order: np.ndarray, bounds: np.ndarray, tx_days: np.ndarray, key: int, first: int, length: int
) -> np.ndarray:
    """Rows of group ``key`` with ``first <= TX_TIME_DAYS < first + length``."""
    rows = order[bounds[key] : bounds[key + 1]]
    lo, hi = np.searchsorted(tx_days[rows], [first, first + length])
    return rows[lo:hi]


def _sample_ids(n_ids: int, n: int, day: int) -> np.ndarray:
    """What pandas ``Series.sample(n, random_state=day)`` picks over ids 0..n_ids-1."""
    return np.random.RandomState(day).permutation(n_ids)[:n]


def scenario_1_amount(tx: TransactionArrays) -> None:
    """Label every transaction above 220 as fraud (a sanity-check pattern)."""
    mask = tx.amount > 220
    tx.fraud[mask] = 1
    tx.scenario[mask] = 1


def scenario_2_terminals(tx: TransactionArrays) -> None:
    """Compromise 2 terminals a day; their next 28 days of transactions are frauds."""
    order, bounds = _group_rows(tx.terminal_id, tx.n_terminals)
    for day in range(int(tx.tx_days.max())):
        for terminal in _sample_ids(tx.n_terminals, 2, day):
            rows = _rows_in_window(order, bounds, tx.tx_days, terminal, day, 28)
            tx.fraud[rows] = 1
            tx.scenario[rows] = 2


def scenario_3_customers(tx: TransactionArrays) -> None:
    """Compromise 3 cards a day; a third of their next 14 days is multiplied by 5.

    Days are processed in order because overlapping windows can pick a row
    several times, and Python ``random.sample`` is seeded with the day over the
    candidate rows in table order.
    """
    order, bounds = _group_rows(tx.customer_id, tx.n_customers)
    rnd = random.Random()
    for day in range(int(tx.tx_days.max())):
        customers = _sample_ids(tx.n_customers, 3, day)
        rows = np.sort(
            np.concatenate(
                [_rows_in_window(order, bounds, tx.tx_days, c, day, 14) for c in customers]
            )
        )
        rnd.seed(day)
        chosen = np.array(rnd.sample(rows.tolist(), k=int(len(rows) / 3)), dtype=np.int64)
        tx.amount[chosen] = tx.amount[chosen] * 5
        tx.fraud[chosen] = 1
        tx.scenario[chosen] = 3


FRAUD_SCENARIOS: tuple[ScenarioStep, ...] = (
    scenario_1_amount,
    scenario_2_terminals,
    scenario_3_customers,
)


def simulate(
    n_customers: int = 5000,
    n_terminals: int = 10000,
    nb_days: int = 183,
    start_date: str = "2018-04-01",
    r: float = 5,
    seed_customers: int = 0,
    seed_terminals: int = 1,
) -> pd.DataFrame:
    """Simulate the labelled transaction table of the handbook.

    Parameters
    ----------
    n_customers, n_terminals
        Number of customer and terminal profiles.
    nb_days
        Number of simulated days, starting at day index 0.
    start_date
        Date of day 0. The handbook's code ignores this argument and always
        uses "2018-04-01"; here it is honoured, which is identical for the
        default value.
    r
        Radius within which a customer uses terminals.
    seed_customers, seed_terminals
        Seeds of the customer and terminal profile draws.

    Returns
    -------
    pandas.DataFrame
        Columns of :data:`RAW_COLUMNS`, one row per transaction, in
        TRANSACTION_ID (chronological) order.
    """
    customers = customer_profiles(n_customers, seed_customers)
    terminals = terminal_profiles(n_terminals, seed_terminals)
    terminals_per_customer = available_terminals(customers, terminals, r)
    seconds, days, customer_id, terminal_id, amount = _generate_transactions(
        customers, terminals_per_customer, nb_days
    )
    # numpy's round (x*100, rint, /100), which is not Python's round().
    amount = np.round(amount, 2)

    # The handbook sorts with pandas' default, non-stable quicksort on the
    # datetime column; ties within a second keep that algorithm's order. numpy
    # sorts datetime64 with its classic introsort (int64 may go through SIMD
    # sorts with another tie order), which reproduces the published order.
    datetimes = np.datetime64(start_date, "ns") + seconds.astype("timedelta64[s]")
    order = np.argsort(datetimes, kind="quicksort")

    tx = TransactionArrays(
        tx_days=days[order],
        customer_id=customer_id[order],
        terminal_id=terminal_id[order],
        amount=amount[order],
        fraud=np.zeros(len(order), dtype=np.int64),
        scenario=np.zeros(len(order), dtype=np.int64),
        n_customers=n_customers,
        n_terminals=n_terminals,
    )
    if len(order):
        for step in FRAUD_SCENARIOS:
            step(tx)

    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(len(order), dtype=np.int64),
            "TX_DATETIME": datetimes[order],
            "CUSTOMER_ID": tx.customer_id,
            "TERMINAL_ID": tx.terminal_id,
            "TX_AMOUNT": tx.amount,
            "TX_TIME_SECONDS": seconds[order],
            "TX_TIME_DAYS": tx.tx_days,
            "TX_FRAUD": tx.fraud,
            "TX_FRAUD_SCENARIO": tx.scenario,
        }
    )


def fingerprint(df: pd.DataFrame) -> dict[str, object]:
    """Summarise a raw transaction table as in ``fingerprint.txt``.

    Returns
    -------
    dict
        ``rows``, ``frauds``, ``scenario_counts`` (label -> count),
        ``amount_cents_sum`` (sum of ``round(TX_AMOUNT * 100)``) and ``sha256``
        of the little-endian int64 matrix (TRANSACTION_ID, TX_TIME_SECONDS,
        CUSTOMER_ID, TERMINAL_ID, TX_FRAUD, TX_FRAUD_SCENARIO,
        TX_AMOUNT_CENTS), rows in TRANSACTION_ID order, C order.
    """
    df = df.sort_values("TRANSACTION_ID", kind="stable")
    cents = np.rint(df["TX_AMOUNT"].to_numpy(dtype=np.float64) * 100).astype(np.int64)
    matrix = np.column_stack(
        [df[c].to_numpy(dtype=np.int64) for c in _FINGERPRINT_COLUMNS] + [cents]
    ).astype("<i8")
    labels, counts = np.unique(df["TX_FRAUD_SCENARIO"].to_numpy(), return_counts=True)
    return {
        "rows": len(df),
        "frauds": int(df["TX_FRAUD"].sum()),
        "scenario_counts": {int(k): int(v) for k, v in zip(labels, counts, strict=True)},
        "amount_cents_sum": int(cents.sum()),
        "sha256": hashlib.sha256(np.ascontiguousarray(matrix).tobytes()).hexdigest(),
    }
