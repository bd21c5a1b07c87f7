"""Stream-exact features beyond the handbook's 14, and the model's input columns.

Every feature here is a pure function of the transaction itself, of the card's
own earlier transactions and of the terminal's earlier *labelled* transactions,
so a stream processor that sees transactions in order and receives each label
``delay_days`` after its transaction can reproduce it exactly.

Conventions shared by all features, the same as the handbook's reference
features (:mod:`models.reference_features`):

* Rows are in chronological order: by TX_DATETIME, ties by TRANSACTION_ID.
  "Earlier" rows of a row are those before it in that order.
* A card window ``(t - w, t]`` holds the card's rows with ``t - w < t_j <= t``
  that are at or before the row itself.
* A terminal row's label is *known* at time ``t`` when ``t_j <= t - delay``
  (the handbook's ``(t - (d + w), t - d]`` windows). The current row's label
  is never known to itself.
* ``day(t)`` is the calendar date of ``t``; day differences count midnights,
  as TX_TIME_DAYS differences do. They are capped at :data:`HORIZON_DAYS`,
  which also stands for "never".

Amount averages are computed from integer cents, so they do not depend on
summation order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from models.reference_features import FEATURE_COLUMNS, add_reference_features

_NS_PER_DAY = 86400 * 10**9

HORIZON_DAYS = 60
"""Cap of the day-count features; a terminal with no such known row gets it."""

CARD_MEAN_DAYS = 90
"""Window of the card's reference mean amount."""

CARD_RECENT_DAYS = 14
"""Window of the card's recent maximum amount."""

EXTRA_FEATURE_COLUMNS: list[str] = [
    "CUSTOMER_ID_AMOUNT_RATIO_90DAY",
    "CUSTOMER_ID_MAX_PREV_AMOUNT_RATIO_14DAY",
    "TERMINAL_ID_KNOWN_FRAUD_RUN",
    "TERMINAL_ID_KNOWN_FRAUD_RUN_DAYS",
    "TERMINAL_ID_DAYS_SINCE_KNOWN_GENUINE",
]
"""The extra features, in model input order.

CUSTOMER_ID_AMOUNT_RATIO_90DAY
    ``TX_AMOUNT / m`` where ``m`` is the mean amount of the card's window
    ``(t - 90 days, t]``, computed as ``(sum of amounts in integer cents) /
    count / 100``. The window includes the row, so ``m > 0`` unless every amount
    in it is zero; then the ratio is 1. Scenario 3 multiplies amounts by 5.
CUSTOMER_ID_MAX_PREV_AMOUNT_RATIO_14DAY
    The largest amount among the card's *earlier* rows in ``(t - 14 days, t]``,
    divided by the same ``m``; 0 when there is none. A card that recently paid
    several times its usual amount is likely compromised.
TERMINAL_ID_KNOWN_FRAUD_RUN
    Among the terminal's rows with known labels, in chronological order, the
    number of consecutive frauds at the end (0 when the last known label is
    genuine or no label is known). A compromised terminal turns every
    transaction into fraud until the compromise ends.
TERMINAL_ID_KNOWN_FRAUD_RUN_DAYS
    ``min(day(t) - day(first row of that run), 60)``; 0 when the run is empty.
    It tells how long ago the compromise began, hence whether it has ended.
TERMINAL_ID_DAYS_SINCE_KNOWN_GENUINE
    ``min(day(t) - day(t_j), 60)`` for the terminal's latest known genuine row
    ``j``; 60 when there is none. A compromise that began after it is still
    invisible, so its chance grows with this gap.
"""

MODEL_FEATURE_COLUMNS: list[str] = [
    *FEATURE_COLUMNS[:9],
    *EXTRA_FEATURE_COLUMNS[:2],
    *FEATURE_COLUMNS[9:],
    *EXTRA_FEATURE_COLUMNS[2:],
]
"""The model inputs in serving order: the transaction's own three, the card's (the
handbook's six, then the extras), the terminal's (the same). This is the order of the
Feast feature service ``fraud_detector_v1`` (``feature_repo/features.py``)."""

SERVING_NAMES: dict[str, str] = dict(
    zip(
        MODEL_FEATURE_COLUMNS,
        [
            "tx_amount", "tx_during_weekend", "tx_during_night",
            *(f"card_activity__{k}_{w}day" for w in (1, 7, 30) for k in ("nb_tx", "avg_amount")),
            "card_activity__amount_ratio_90day", "card_activity__max_prev_amount_ratio_14day",
            *(f"terminal_risk__{kind}_{w}day" for w in (1, 7, 30) for kind in ("nb_tx", "risk")),
            "terminal_risk__known_fraud_run", "terminal_risk__known_fraud_run_days",
            "terminal_risk__days_since_known_genuine",
        ],
        strict=True,
    )
)
"""Each model column's name in the stream's feature log and in Feast."""


LABEL_DELAY_DAYS = 7
"""The label delay the terminal features assume (the handbook's, and the stream's)."""


def warm_up_days(column: str, delay_days: float = LABEL_DELAY_DAYS) -> float:
    """Days of history a model column needs before its window is complete.

    A row less than this after the start of the history its features were computed
    from has a partly empty window: its counts and sums are smaller than they will be
    in steady state, which drift monitors would rightly call a shift. Card windows
    need their length; terminal windows need their length plus the label delay (they
    hold ``(t - (d + w), t - d]``); the 60-day capped gaps need the cap plus the delay;
    the transaction's own columns need nothing.
    """
    if column.startswith("TX_"):
        return 0.0
    if column in ("CUSTOMER_ID_AMOUNT_RATIO_90DAY", "CUSTOMER_ID_MAX_PREV_AMOUNT_RATIO_14DAY"):
        # Both divide by the card's 90-day mean, whose spread narrows as its window fills.
        return float(CARD_MEAN_DAYS)
    if column.startswith("TERMINAL_ID_KNOWN_FRAUD_RUN") or column == (
            "TERMINAL_ID_DAYS_SINCE_KNOWN_GENUINE"):
        return float(HORIZON_DAYS) + delay_days
    for prefix, extra in (("CUSTOMER_ID_", 0.0), ("TERMINAL_ID_", delay_days)):
        if column.startswith(prefix) and column.endswith("DAY_WINDOW"):
            days = column.removesuffix("DAY_WINDOW").rsplit("_", 1)[-1]
            return float(days) + extra
    raise KeyError(f"no warm-up known for column {column!r}")


def feature_entity(column: str) -> str:
    """Whose value a model column is: ``card``, ``terminal`` or ``transaction``."""
    if column.startswith("CUSTOMER_ID_"):
        return "card"
    return "terminal" if column.startswith("TERMINAL_ID_") else "transaction"


SCORE_WARM_UP_DAYS = 30.0 + LABEL_DELAY_DAYS
"""History a score needs before the drift monitors compare it: the longest count window
(the terminal's 30 days behind the label delay). The 90-day mean ratio and the 60-day
capped gaps still move slowly after that; a no-drift run raises no score alarm."""


def from_serving_names(frame: pd.DataFrame) -> pd.DataFrame:
    """A feature-log frame with its feature columns renamed to :data:`MODEL_FEATURE_COLUMNS`.

    Raises
    ------
    KeyError
        Naming every model feature the frame lacks.
    """
    missing = [name for name in SERVING_NAMES.values() if name not in frame.columns]
    if missing:
        raise KeyError(f"the feature log lacks model features {missing}")
    return frame.rename(columns={v: k for k, v in SERVING_NAMES.items()})


class _Groups:
    """Rows arranged group by group, chronologically inside a group.

    ``order`` maps grouped positions to chronological positions; every other
    array is indexed by grouped position.
    """

    def __init__(self, keys: np.ndarray, times: np.ndarray) -> None:
        n = len(keys)
        self.order = np.argsort(keys, kind="stable")
        grouped_keys = keys[self.order]
        self.times = times[self.order]
        self.position = np.arange(n, dtype=np.int64)
        new_group = np.ones(n, dtype=bool)
        new_group[1:] = grouped_keys[1:] != grouped_keys[:-1]
        self.first = np.maximum.accumulate(np.where(new_group, self.position, 0))
        # Group rank * n + chronological index increases along the grouped order,
        # which turns "first row of my group after time x" into one searchsorted.
        self._chronological_times = times
        self._base = (np.cumsum(new_group) - 1).astype(np.int64) * n
        self._composite = self._base + self.order

    def start(self, lag_ns: int) -> np.ndarray:
        """First grouped position of the row's group with ``t_j > t - lag``."""
        chronological = self._chronological_times
        before = np.searchsorted(chronological, chronological - lag_ns, side="right")
        return np.searchsorted(self._composite, self._base + before[self.order], side="left")

    def scatter(self, values: np.ndarray) -> np.ndarray:
        """Grouped-order values back in chronological order."""
        out = np.empty_like(values)
        out[self.order] = values
        return out


def _last_where(flag: np.ndarray, groups: _Groups) -> np.ndarray:
    """Latest grouped position ``<= p`` of the group where ``flag`` holds, else ``first - 1``."""
    hit = np.where(flag, groups.position, -1)
    return np.maximum.accumulate(np.maximum(hit, groups.first - 1))


def _card_features(cards: _Groups, amounts: np.ndarray) -> dict[str, np.ndarray]:
    end = cards.position + 1
    cents = np.zeros(len(amounts) + 1, dtype=np.int64)
    np.cumsum(np.rint(amounts * 100).astype(np.int64), out=cents[1:])
    start = cards.start(CARD_MEAN_DAYS * _NS_PER_DAY)
    mean = (cents[end] - cents[start]) / (end - start) / 100
    safe_mean = np.where(mean > 0, mean, 1.0)
    ratio = np.where(mean > 0, amounts / safe_mean, 1.0)

    # Windows hold a few dozen rows, so scanning offsets 1, 2, ... over the rows
    # whose window still reaches that far is fast and exact.
    recent = cards.start(CARD_RECENT_DAYS * _NS_PER_DAY)
    largest = np.zeros(len(amounts))
    rows = np.flatnonzero(cards.position - 1 >= recent)
    offset = 1
    while len(rows):
        largest[rows] = np.maximum(largest[rows], amounts[rows - offset])
        offset += 1
        rows = rows[rows - offset >= recent[rows]]
    return {
        "CUSTOMER_ID_AMOUNT_RATIO_90DAY": ratio,
        "CUSTOMER_ID_MAX_PREV_AMOUNT_RATIO_14DAY": largest / safe_mean,
    }


def _terminal_features(
    terminals: _Groups, frauds: np.ndarray, days: np.ndarray, delay_ns: int
) -> dict[str, np.ndarray]:
    fraud = frauds == 1
    last_genuine = _last_where(~fraud, terminals)
    known = terminals.start(delay_ns) - 1
    has_known = known >= terminals.first
    k = np.maximum(known, 0)
    run = np.where(has_known & fraud[k], k - last_genuine[k], 0)
    run_first = np.maximum(k - run + 1, 0)

    latest_genuine = last_genuine[k]
    genuine_gap = days - days[np.maximum(latest_genuine, 0)]

    return {
        "TERMINAL_ID_KNOWN_FRAUD_RUN": run.astype(np.float64),
        "TERMINAL_ID_KNOWN_FRAUD_RUN_DAYS": np.where(
            run > 0, np.minimum(days - days[run_first], HORIZON_DAYS), 0
        ).astype(np.float64),
        "TERMINAL_ID_DAYS_SINCE_KNOWN_GENUINE": np.where(
            has_known & (latest_genuine >= terminals.first),
            np.minimum(genuine_gap, HORIZON_DAYS),
            HORIZON_DAYS,
        ).astype(np.float64),
    }


def add_extra_features(df: pd.DataFrame, delay_days: int = 7) -> pd.DataFrame:
    """Add :data:`EXTRA_FEATURE_COLUMNS` to a transaction table.

    Parameters
    ----------
    df
        Transactions with TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID,
        TX_AMOUNT and TX_FRAUD, in any row order.
    delay_days
        Feedback delay: a label is known ``delay_days`` after its transaction.

    Returns
    -------
    pandas.DataFrame
        A copy of ``df`` with the extra columns appended (float64), in the
        input's row order and index.
    """
    datetimes = pd.DatetimeIndex(df["TX_DATETIME"])
    times = datetimes.asi8
    chronological = np.lexsort((df["TRANSACTION_ID"].to_numpy(), times))
    times = times[chronological]
    amounts = df["TX_AMOUNT"].to_numpy(dtype=np.float64)[chronological]
    frauds = df["TX_FRAUD"].to_numpy(dtype=np.int64)[chronological]
    days = datetimes.to_numpy().astype("datetime64[D]").astype(np.int64)[chronological]

    cards = _Groups(df["CUSTOMER_ID"].to_numpy()[chronological], times)
    card = {
        name: cards.scatter(v) for name, v in _card_features(cards, amounts[cards.order]).items()
    }

    terminals = _Groups(df["TERMINAL_ID"].to_numpy()[chronological], times)
    terminal = _terminal_features(
        terminals,
        frauds[terminals.order],
        days[terminals.order],
        delay_days * _NS_PER_DAY,
    )
    features = card | {name: terminals.scatter(v) for name, v in terminal.items()}

    out = df.copy()
    for name in EXTRA_FEATURE_COLUMNS:
        values = np.empty(len(df), dtype=np.float64)
        values[chronological] = features[name]
        out[name] = values
    return out


LABEL_DELAY_COLUMN = "LABEL_DELAY_DAYS"
"""Optional per-transaction label delay in days (default ``delay_days``); see
:func:`add_model_features`."""

TERMINAL_FEATURE_COLUMNS: list[str] = [
    *(f"TERMINAL_ID_{kind}_{w}DAY_WINDOW" for w in (1, 7, 30) for kind in ("NB_TX", "RISK")),
    "TERMINAL_ID_KNOWN_FRAUD_RUN",
    "TERMINAL_ID_KNOWN_FRAUD_RUN_DAYS",
    "TERMINAL_ID_DAYS_SINCE_KNOWN_GENUINE",
]
"""The features made from the terminal's labels: the ones a late label changes."""


def add_model_features(df: pd.DataFrame, delay_days: int = 7) -> pd.DataFrame:
    """Raw transactions with the handbook features and the extras: every model input.

    When ``df`` has a :data:`LABEL_DELAY_COLUMN`, each label is known that many days
    after its transaction (rounded to the second, as the replay sends it) instead of
    ``delay_days``, and the column is kept. The terminal windows still end ``delay_days``
    before the row, but they hold only the labels known by the row's time: a label later
    than ``delay_days`` is missing from them until it arrives, as in the stream.
    """
    out = add_extra_features(add_reference_features(df, delay_days), delay_days)
    if LABEL_DELAY_COLUMN not in df.columns:
        return out
    delays = df[LABEL_DELAY_COLUMN].to_numpy(np.float64)
    out[LABEL_DELAY_COLUMN] = delays
    _with_late_labels(out, delays, delay_days)
    return out


def _with_late_labels(out: pd.DataFrame, delays: np.ndarray, delay_days: int) -> None:
    """Recompute, in place, the terminal features of the rows a late label changes.

    Label ``j`` (``delays[j] > delay_days``) is in the windows' range from
    ``t_j + delay_days`` but not known before ``t_j + delay``: only the rows of its
    terminal in that interval differ from the constant-delay features, and they are
    recomputed from the definition, label by label.
    """
    delay_ns = np.rint(delays * 86400).astype(np.int64) * 10**9
    if not (delay_ns > delay_days * _NS_PER_DAY).any():
        return
    times = pd.DatetimeIndex(out["TX_DATETIME"]).asi8
    known_at = times + delay_ns
    late_terminals = np.unique(out["TERMINAL_ID"].to_numpy()[delay_ns > delay_days * _NS_PER_DAY])
    terminal_ids = out["TERMINAL_ID"].to_numpy()
    frauds = out["TX_FRAUD"].to_numpy(np.int64)
    ids = out["TRANSACTION_ID"].to_numpy()
    columns = [out.columns.get_loc(c) for c in TERMINAL_FEATURE_COLUMNS]
    values = out[TERMINAL_FEATURE_COLUMNS].to_numpy(np.float64)
    window_ns = np.array([1, 7, 30], dtype=np.int64) * _NS_PER_DAY
    end_lag = delay_days * _NS_PER_DAY
    for terminal in late_terminals:
        rows = np.flatnonzero(terminal_ids == terminal)
        rows = rows[np.lexsort((ids[rows], times[rows]))]
        t, known, fraud = times[rows], known_at[rows], frauds[rows]
        day = t // _NS_PER_DAY
        late = np.flatnonzero(known > t + end_lag)
        # Rows with t + d <= t_i < known of some late label.
        changed = np.zeros(len(rows), dtype=bool)
        for lo, hi in zip(np.searchsorted(t, t[late] + end_lag, "left"),
                          np.searchsorted(t, known[late], "left"), strict=True):
            changed[lo:hi] = True
        for i in np.flatnonzero(changed):
            end = t[i] - end_lag
            sel = np.flatnonzero((t <= end) & (known <= t[i]))
            feature = []
            for w in window_ns:
                in_window = sel[t[sel] > end - w]
                count = len(in_window)
                feature += [float(count), fraud[in_window].sum() / count if count else 0.0]
            genuine = sel[fraud[sel] == 0]
            run = sel[sel > genuine[-1]] if len(genuine) else sel
            today = day[i]
            feature += [
                float(len(run)),
                float(min(today - day[run[0]], HORIZON_DAYS)) if len(run) else 0.0,
                float(min(today - day[genuine[-1]], HORIZON_DAYS)) if len(genuine)
                else float(HORIZON_DAYS),
            ]
            values[rows[i]] = feature
    for k, column in enumerate(columns):
        out.iloc[:, column] = values[:, k]
