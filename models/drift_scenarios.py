"""The drift scenarios beyond the handbook, one function a kind: ``(df, spec, seed) -> df``.

:func:`card_testing`, :func:`spending_shift`, :func:`label_delay` and :func:`night_spree`
each run as a step on a finished simulator table (:func:`models.drift.apply_drift` runs
them in order), deterministic given the seed, and never change a row before their start
day.

What a model trained before the drift experiences
-------------------------------------------------

=================  ====================================================================
scenario           expected effect on a model trained on earlier weeks
=================  ====================================================================
``card_testing``   A new fraud pattern (scenario 4): stolen cards hit with bursts of
                   many tiny amounts. The baseline model learned "fraud = large amount
                   or risky terminal"; tiny amounts on ordinary terminals score lowest
                   of all, so **recall and average precision on scenario-4 frauds
                   collapse** and pooled AP and CP@100 drop with the share of new
                   frauds. The signal exists in the baseline features (the card's
                   1-day count jumps, its 1-day mean amount falls) but carries no
                   weight until the model is retrained on post-drift labels.
``spending_shift`` Covariate shift: a share of customers spend ``factor`` times more
                   (genuine transactions only) and transact ``frequency`` times as often.
                   The amount and customer-window features move (PSI alarms), genuine
                   rows of affected customers score higher (**false positives up,
                   precision and AP down**), and scenario-3 frauds (5x the old
                   spending) stand out less against the new spending.
``label_delay``    Labels arrive later (e.g. 14 days instead of 7). The model's inputs
                   do not change, but terminal-risk features built from labels known
                   7 days after the fact see fewer frauds: **risk features are
                   underestimated, recall on scenario 2 (compromised terminals)
                   drops**, and live quality on matured labels lags by the new delay.
``night_spree``    A new fraud pattern (scenario 7): taken-over cards make a spree of
                   a few purchases between 00:00 and 05:59, on terminals drawn from
                   all terminals, at 0.5 to 2 times the card's usual amount and below
                   220 (scenario 1's rule never fires). The handbook's frauds keep the
                   genuine time of day, so the baseline model gives the night flag no
                   weight, and ordinary amounts on terminals with no known fraud score
                   low: **recall and average precision on scenario-7 frauds stay near
                   chance**. The signal is in the night flag, the card's 1-day count
                   (a spree adds 3 to 8 within six hours) and in terminals the card
                   never used, which no current feature encodes; it carries weight
                   only once the model is retrained on post-drift labels.
=================  ====================================================================

Row conventions: rows added by a step get fresh TRANSACTION_IDs; the table is re-sorted
by TX_DATETIME (stable, so ties keep their order and added rows go after existing rows
of the same second) and TRANSACTION_ID is renumbered 0..N-1 in that order, as the
simulator does. Rows before the earliest start day keep their position and id.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from models.drift_spec import DriftSpec
from models.extra_features import LABEL_DELAY_COLUMN
from models.simulator import SECONDS_PER_DAY

CARD_TESTING_SCENARIO = 4
NIGHT_SPREE_SCENARIO = 7
NIGHT_SECONDS = 6 * 3600
"""A spree's rows fall in [00:00, 06:00) of their day, inside the reference night flag."""
DEFAULT_LABEL_DELAY_DAYS = 7.0
SCENARIO_1_THRESHOLD = 220.0


def label_delays(df: pd.DataFrame) -> np.ndarray:
    """Per-transaction label delay in days: the column, or the default 7 for every row."""
    if LABEL_DELAY_COLUMN in df.columns:
        return df[LABEL_DELAY_COLUMN].to_numpy(dtype=np.float64)
    return np.full(len(df), DEFAULT_LABEL_DELAY_DAYS)


def _origin(df: pd.DataFrame) -> np.datetime64:
    """The datetime of day 0, 00:00:00 (TX_DATETIME minus TX_TIME_SECONDS)."""
    first = df["TX_DATETIME"].to_numpy("datetime64[ns]")[0]
    return first - np.timedelta64(int(df["TX_TIME_SECONDS"].iloc[0]), "s")


def _window(df: pd.DataFrame, spec: DriftSpec) -> tuple[np.ndarray, int]:
    days = df["TX_TIME_DAYS"].to_numpy(np.int64)
    end = spec.end_day(int(days.max()) if len(days) else 0)
    return (days >= spec.start_day) & (days < end), end


def _rebuild(
    df: pd.DataFrame, keep: np.ndarray | None, added: dict[str, np.ndarray]
) -> pd.DataFrame:
    """Drop rows, append new ones, re-sort by time (stable) and renumber ids.

    ``added`` holds every raw column but TRANSACTION_ID and TX_DATETIME (derived from
    TX_TIME_SECONDS); it may be empty.
    """
    parts = [df if keep is None else df[keep]]
    if added and len(added["TX_TIME_SECONDS"]):
        n_new = len(added["TX_TIME_SECONDS"])
        extra = pd.DataFrame(added)
        extra["TRANSACTION_ID"] = np.zeros(n_new, np.int64)
        extra["TX_DATETIME"] = _origin(df) + added["TX_TIME_SECONDS"].astype("timedelta64[s]")
        if LABEL_DELAY_COLUMN in df.columns:
            extra[LABEL_DELAY_COLUMN] = DEFAULT_LABEL_DELAY_DAYS
        parts.append(extra[list(df.columns)])
    out = pd.concat(parts, ignore_index=True)
    order = np.argsort(out["TX_DATETIME"].to_numpy("datetime64[ns]").view(np.int64),
                       kind="stable")
    out = out.iloc[order].reset_index(drop=True)
    out["TRANSACTION_ID"] = np.arange(len(out), dtype=np.int64)
    return out.astype(df.dtypes.to_dict())


def _card_terminals(df: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """Cards present in the table and, per card, the terminals it has used."""
    pairs = df[["CUSTOMER_ID", "TERMINAL_ID"]].drop_duplicates().sort_values(
        ["CUSTOMER_ID", "TERMINAL_ID"], kind="stable")
    cards, starts = np.unique(pairs["CUSTOMER_ID"].to_numpy(np.int64), return_index=True)
    terminals = np.split(pairs["TERMINAL_ID"].to_numpy(np.int64), starts[1:])
    return cards, terminals


def card_testing(df: pd.DataFrame, spec: DriftSpec, seed: Sequence[int]) -> pd.DataFrame:
    """Stolen cards tested with bursts of tiny amounts (new fraud scenario 4).

    On each day of the window, ``intensity`` cards (among those in the table) are
    stolen; each gets one burst of ``burst_size`` transactions of ``amount_range``
    units (2 decimals), at times spread uniformly over ``burst_hours`` hours starting
    at a random time of that day, on terminals drawn from those the card has used.
    Added rows are frauds with TX_FRAUD_SCENARIO 4; existing rows are not touched.

    A model trained before the drift scores these rows among the lowest of all (tiny
    amounts, ordinary terminals): recall and AP on scenario 4 are close to chance
    until it is retrained with the card's 1-day count, which jumps with each burst,
    carrying weight.
    """
    if not len(df):
        return df
    cards, terminals = _card_terminals(df)
    days = df["TX_TIME_DAYS"].to_numpy(np.int64)
    end = spec.end_day(int(days.max()))
    n_cards = min(int(round(spec.level)), len(cards))
    columns: dict[str, list[np.ndarray]] = {
        k: [] for k in ("CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_TIME_SECONDS")
    }
    low, high = spec.burst_size
    for day in range(spec.start_day, end):
        rng = np.random.default_rng([*seed, day])
        for position in rng.choice(len(cards), size=n_cards, replace=False):
            size = int(rng.integers(low, high + 1))
            span = rng.uniform(*spec.burst_hours) * 3600
            begin = rng.uniform(0, SECONDS_PER_DAY - span)
            offsets = np.sort(rng.uniform(0, span, size))
            columns["TX_TIME_SECONDS"].append(
                day * SECONDS_PER_DAY + (begin + offsets).astype(np.int64))
            columns["CUSTOMER_ID"].append(np.full(size, cards[position], np.int64))
            columns["TERMINAL_ID"].append(rng.choice(terminals[position], size=size))
            columns["TX_AMOUNT"].append(np.round(rng.uniform(*spec.amount_range, size), 2))
    if not columns["TX_TIME_SECONDS"]:
        return df
    added = {k: np.concatenate(v) for k, v in columns.items()}
    added["TX_TIME_DAYS"] = added["TX_TIME_SECONDS"] // SECONDS_PER_DAY
    added["TX_FRAUD"] = np.ones(len(added["TX_AMOUNT"]), np.int64)
    added["TX_FRAUD_SCENARIO"] = np.full(len(added["TX_AMOUNT"]), CARD_TESTING_SCENARIO)
    return _rebuild(df, None, added)


def night_spree(df: pd.DataFrame, spec: DriftSpec, seed: Sequence[int]) -> pd.DataFrame:
    """Taken-over cards make sprees of purchases at night (new fraud scenario 7).

    On each day of the window, ``intensity`` cards (among those in the table with a
    genuine transaction before ``start_day``) are taken over; each gets one spree of
    ``spree_size`` transactions at times drawn uniformly in [00:00, 06:00) of that
    day, on terminals drawn uniformly from all terminals in the table. Amounts are
    the card's mean genuine amount before ``start_day`` times U(0.5, 2.0), rounded to
    2 decimals and kept in [0.01, 219.99], so scenario 1 (amount above 220) never
    labels them. Added rows are frauds with TX_FRAUD_SCENARIO 7; existing rows are
    not touched.

    A model trained before the drift has seen frauds only at the genuine time of day,
    at large amounts or on risky terminals: these rows look ordinary to it, and the
    night flag and the card's 1-day count carry weight only once it is retrained.

    Raises
    ------
    ValueError
        When the window has days but no card has a genuine transaction before
        ``start_day`` (the amounts need the card's own mean).
    """
    if not len(df):
        return df
    days = df["TX_TIME_DAYS"].to_numpy(np.int64)
    end = spec.end_day(int(days.max()))
    history = df[(days < spec.start_day) & (df["TX_FRAUD"].to_numpy(np.int64) == 0)]
    means = history.groupby("CUSTOMER_ID")["TX_AMOUNT"].mean().sort_index()
    cards = means.index.to_numpy(np.int64)
    usual = means.to_numpy(np.float64)
    if spec.start_day < end and not len(cards):
        raise ValueError(f"night_spree from day {spec.start_day}: no card has a genuine "
                         "transaction before the start day to set its amounts")
    all_terminals = np.unique(df["TERMINAL_ID"].to_numpy(np.int64))
    n_cards = min(int(round(spec.level)), len(cards))
    columns: dict[str, list[np.ndarray]] = {
        k: [] for k in ("CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_TIME_SECONDS")
    }
    low, high = spec.spree_size
    for day in range(spec.start_day, end):
        rng = np.random.default_rng([*seed, day])
        for position in rng.choice(len(cards), size=n_cards, replace=False):
            size = int(rng.integers(low, high + 1))
            seconds = np.sort(rng.integers(0, NIGHT_SECONDS, size))
            columns["TX_TIME_SECONDS"].append(day * SECONDS_PER_DAY + seconds)
            columns["CUSTOMER_ID"].append(np.full(size, cards[position], np.int64))
            columns["TERMINAL_ID"].append(rng.choice(all_terminals, size=size))
            amounts = np.round(usual[position] * rng.uniform(0.5, 2.0, size), 2)
            columns["TX_AMOUNT"].append(np.clip(amounts, 0.01, SCENARIO_1_THRESHOLD - 0.01))
    if not columns["TX_TIME_SECONDS"]:
        return df
    added = {k: np.concatenate(v) for k, v in columns.items()}
    added["TX_TIME_DAYS"] = added["TX_TIME_SECONDS"] // SECONDS_PER_DAY
    added["TX_FRAUD"] = np.ones(len(added["TX_AMOUNT"]), np.int64)
    added["TX_FRAUD_SCENARIO"] = np.full(len(added["TX_AMOUNT"]), NIGHT_SPREE_SCENARIO)
    return _rebuild(df, None, added)


def spending_shift(df: pd.DataFrame, spec: DriftSpec, seed: Sequence[int]) -> pd.DataFrame:
    """Genuine spending of a share of customers changes in amount and frequency.

    ``intensity`` of the customers in the table are chosen. Inside the window, their
    genuine transactions (TX_FRAUD 0) have their amount multiplied by ``factor``
    (rounded to 2 decimals), and their number changes by ``frequency``: below 1 each
    genuine transaction is dropped with probability ``1 - frequency``; above 1 each
    gets ``Poisson(frequency - 1)`` extra transactions of the same amount, on the same
    terminal and day, at a time of day drawn as the simulator draws it. Frauds are
    never changed, dropped or added: this is a shift of genuine spending only.

    Labels keep their meaning: a genuine transaction stays genuine, and so that
    scenario 1 (every amount above 220 is fraud) still holds everywhere, a scaled
    genuine amount is capped at 220.00. An added transaction is on a terminal that is
    not compromised that day (its source row is genuine), so scenario 2 holds too.

    A model trained before the drift sees larger amounts and customer-window averages
    on genuine rows (PSI of the amount features rises), scores them higher (false
    positives up, precision and AP down), and finds scenario-3 frauds (5x the old
    spending) harder to separate from the new spending.
    """
    if not len(df):
        return df
    rng = np.random.default_rng(list(seed))
    customers = np.unique(df["CUSTOMER_ID"].to_numpy(np.int64))
    n_affected = int(round(spec.level * len(customers)))
    affected = rng.choice(customers, size=n_affected, replace=False)
    in_window, _ = _window(df, spec)
    rows = np.flatnonzero(
        in_window & np.isin(df["CUSTOMER_ID"].to_numpy(np.int64), affected)
        & (df["TX_FRAUD"].to_numpy(np.int64) == 0)
    )
    out = df.copy()
    amounts = out["TX_AMOUNT"].to_numpy(np.float64).copy()
    amounts[rows] = np.minimum(np.round(amounts[rows] * spec.factor, 2), SCENARIO_1_THRESHOLD)
    out["TX_AMOUNT"] = amounts

    keep: np.ndarray | None = None
    added: dict[str, np.ndarray] = {}
    if spec.frequency < 1:
        keep = np.ones(len(out), dtype=bool)
        keep[rows[rng.random(len(rows)) >= spec.frequency]] = False
    elif spec.frequency > 1:
        copies = rng.poisson(spec.frequency - 1, len(rows))
        source = np.repeat(rows, copies)
        seconds = _time_of_day(rng, len(source))
        day = out["TX_TIME_DAYS"].to_numpy(np.int64)[source]
        added = {
            "CUSTOMER_ID": out["CUSTOMER_ID"].to_numpy(np.int64)[source],
            "TERMINAL_ID": out["TERMINAL_ID"].to_numpy(np.int64)[source],
            "TX_AMOUNT": amounts[source],
            "TX_TIME_SECONDS": day * SECONDS_PER_DAY + seconds,
            "TX_TIME_DAYS": day,
            "TX_FRAUD": np.zeros(len(source), np.int64),
            "TX_FRAUD_SCENARIO": np.zeros(len(source), np.int64),
        }
    return _rebuild(out, keep, added)


def _time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds in (0, 86400) from N(43200, 20000), truncated like the simulator's."""
    out = np.empty(n, np.int64)
    todo = np.arange(n)
    while len(todo):
        draw = rng.normal(43200.0, 20000.0, len(todo)).astype(np.int64)
        ok = (draw > 0) & (draw < SECONDS_PER_DAY)
        out[todo[ok]] = draw[ok]
        todo = todo[~ok]
    return out


def label_delay(df: pd.DataFrame, spec: DriftSpec, seed: Sequence[int]) -> pd.DataFrame:
    """Set the per-transaction ``LABEL_DELAY_DAYS`` (default 7) and lengthen it in the window.

    Inside the window, a share ``intensity`` of the transactions get the delay
    ``delay_days + U(0, delay_spread_days)`` days; the others keep theirs (7 unless an
    earlier step set another). The replay producer emits each label when event time
    passes ``event_time + delay``.

    A model trained before the drift gets the same inputs, but labels known a week
    after the fact miss the late ones: terminal-risk features (fraud share of a
    terminal's matured labels) are underestimated, so recall on compromised terminals
    (scenario 2) drops, and quality measured on matured labels lags by the new delay.
    """
    out = df.copy()
    delays = label_delays(out).copy()
    rng = np.random.default_rng(list(seed))
    in_window, _ = _window(out, spec)
    chosen = in_window & (rng.random(len(out)) < spec.level)
    spread = rng.uniform(0.0, spec.delay_spread_days, len(out)) if spec.delay_spread_days else 0.0
    delays[chosen] = np.broadcast_to(spec.delay_days + spread, len(out))[chosen]
    out[LABEL_DELAY_COLUMN] = delays
    return out
