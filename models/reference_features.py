"""Batch reference features of the Fraud Detection Handbook (Chapter 3.3).

The handbook computes its 14 features with pandas time-based rolling windows,
grouped by customer and by terminal. This module computes the same values with
prefix sums and binary searches over the whole table at once, which is about
two orders of magnitude faster on the 1.75M-row dataset.

Window semantics, as in pandas ``rolling("<w>d")`` on the chronologically
sorted rows of one customer or terminal: the window of row ``i`` at time ``t``
holds the rows ``j`` of the same group with ``t - w < t_j <= t`` that are at or
before ``i`` in sort order. Rows sharing a timestamp are sorted by
TRANSACTION_ID, so among them the later rows are excluded.

Counts are float64, as pandas' rolling ``count`` returns them and as the
published transformed files store them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from models.simulator import RAW_COLUMNS

_NS_PER_DAY = 86400 * 10**9


def feature_columns(windows: Sequence[int] = (1, 7, 30)) -> list[str]:
    """Names of the model inputs, in the handbook's order, for given windows."""
    columns = ["TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
    for w in windows:
        columns += [f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW", f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"]
    for w in windows:
        columns += [f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW", f"TERMINAL_ID_RISK_{w}DAY_WINDOW"]
    return columns


FEATURE_COLUMNS: list[str] = feature_columns()
"""The 15 model inputs of the handbook, in its order."""

TARGET_COLUMN = "TX_FRAUD"


class _GroupedWindows:
    """Window bounds for rows grouped by one key.

    Rows are arranged group by group, chronologically within a group (the
    "grouped order"); all arrays returned here are in that order. Working in
    grouped order keeps every binary search's queries sorted, which makes
    ``searchsorted`` about ten times faster than with scattered queries.
    """

    def __init__(self, keys: np.ndarray, times: np.ndarray) -> None:
        n = len(keys)
        self.times = times
        self.order = np.argsort(keys, kind="stable")
        # Dense group ranks keep rank * n + chronological index inside int64;
        # that composite increases along the grouped order.
        _, dense = np.unique(keys[self.order], return_inverse=True)
        self.group_base = dense.astype(np.int64).reshape(-1) * n
        self.composite = self.group_base + self.order
        self.row_end = np.arange(1, n + 1, dtype=np.int64)

    def start(self, window_ns: int) -> np.ndarray:
        """Position of the first row of the group with ``t_j > t_i - window``."""
        before = np.searchsorted(self.times, self.times - window_ns, side="right")
        return np.searchsorted(self.composite, self.group_base + before[self.order], side="left")

    def prefix(self, values: np.ndarray) -> np.ndarray:
        """Prefix sums of ``values`` (chronological order) along the grouped order."""
        out = np.zeros(len(values) + 1, dtype=values.dtype)
        np.cumsum(values[self.order], out=out[1:])
        return out

    def scatter(self, values: np.ndarray) -> np.ndarray:
        """Move grouped-order values back to chronological order."""
        out = np.empty_like(values)
        out[self.order] = values
        return out


def _window_sums(windows: _GroupedWindows, amounts: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Sum amounts from ``start`` to the row itself, almost exactly.

    A plain float prefix sum over 1.75M amounts loses about 1e-8 absolute. The
    amounts are split into integer cents, summed exactly, and a tiny float
    remainder, so that the result agrees with pandas' compensated rolling sum
    to about 1e-12.
    """
    cents = np.rint(amounts * 100)
    remainder = amounts - cents / 100
    cents_prefix = windows.prefix(cents.astype(np.int64))
    rem_prefix = windows.prefix(remainder)
    end = windows.row_end
    return (cents_prefix[end] - cents_prefix[start]) / 100 + (rem_prefix[end] - rem_prefix[start])


def add_reference_features(
    df: pd.DataFrame, delay_days: int = 7, windows: Sequence[int] = (1, 7, 30)
) -> pd.DataFrame:
    """Add the handbook's 14 features to a raw transaction table.

    Parameters
    ----------
    df
        Raw transactions with the columns of :data:`models.simulator.RAW_COLUMNS`.
    delay_days
        Feedback delay: terminal risk windows end ``delay_days`` before the
        transaction, so no label younger than the delay is used.
    windows
        Window lengths in days.

    Returns
    -------
    pandas.DataFrame
        The 9 raw columns followed by TX_DURING_WEEKEND, TX_DURING_NIGHT, the
        customer features and the terminal features, in the input's row order
        and index.
    """
    raw = df.loc[:, list(RAW_COLUMNS)]
    datetimes = pd.DatetimeIndex(raw["TX_DATETIME"])
    times = datetimes.asi8
    chronological = np.lexsort((raw["TRANSACTION_ID"].to_numpy(), times))
    times = times[chronological]
    amounts = raw["TX_AMOUNT"].to_numpy(dtype=np.float64)[chronological]
    frauds = raw["TX_FRAUD"].to_numpy(dtype=np.int64)[chronological]

    features: dict[str, np.ndarray] = {
        "TX_DURING_WEEKEND": (datetimes.weekday >= 5).astype(np.int64),
        "TX_DURING_NIGHT": (datetimes.hour <= 6).astype(np.int64),
    }
    chronological_features: dict[str, np.ndarray] = {}

    customers = _GroupedWindows(raw["CUSTOMER_ID"].to_numpy()[chronological], times)
    for w in windows:
        start = customers.start(w * _NS_PER_DAY)
        count = (customers.row_end - start).astype(np.float64)
        average = _window_sums(customers, amounts, start) / count
        chronological_features[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = customers.scatter(count)
        chronological_features[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = customers.scatter(average)

    terminals = _GroupedWindows(raw["TERMINAL_ID"].to_numpy()[chronological], times)
    fraud_prefix = terminals.prefix(frauds)
    delay_start = terminals.start(delay_days * _NS_PER_DAY)
    for w in windows:
        window_start = terminals.start((delay_days + w) * _NS_PER_DAY)
        # Rows in [window_start, delay_start) are those in (t - (d+w), t - d].
        count = delay_start - window_start
        nb_fraud = fraud_prefix[delay_start] - fraud_prefix[window_start]
        risk = np.divide(nb_fraud, count, out=np.zeros(len(count)), where=count > 0)
        chronological_features[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = terminals.scatter(
            count.astype(np.float64)
        )
        chronological_features[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = terminals.scatter(risk)

    for name, values in chronological_features.items():
        features[name] = np.empty_like(values)
        features[name][chronological] = values

    out = raw.copy()
    for name in feature_columns(windows)[1:]:
        out[name] = features[name]
    return out
