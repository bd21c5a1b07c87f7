"""The label-delay oracle, and how long the served model takes to come back within reach of it.

The oracle is the best the loop could do if only the label delay stood in its way: at
the start of every event day it is retrained on all the labels known by then (a row's
label is known once its event time plus its label delay has passed), warm-started from
the day before, with the retrainer's recipe, and it scores that day's rows. It has no
detection lag (nothing waits for a drift detector), no trigger policy, no gate (every
day's model serves, good or bad), no gate window withheld from training and no wall
time (training costs no event time). It is *not* a perfect model: it uses the same
recipe and the same training windows as the retrainer, and it cannot learn a new fraud
pattern before the first labels of it arrive, a delay after the drift. The served
model's gap to it is therefore what the loop's machinery costs, not what the label delay
costs.

"Time to recover" (:func:`time_to_recover`) is the first day after the drift from which
the served model's average precision stays within a tolerance of the oracle's. Both are
compared on a trailing window of days (:func:`daily_ap`): a day of the loop's world
holds some twenty frauds, and the AP of twenty positives swings by tens of percent from
one day to the next for the same model, so a single-day comparison would recover and
relapse on noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from models.binned_mlp import BinnedMLP, FraudEnsemble
from models.drift_scenarios import label_delays
from models.recipe import Recipe, fit_fraud_model, predict
from models.reference_features import TARGET_COLUMN
from models.simulator import SECONDS_PER_DAY
from models.train import Device

EVENT_TIME_COLUMN = "event_time"
"""Unix seconds of the event, the feature log's column; read when TX_DATETIME is absent."""


def event_seconds(frame: pd.DataFrame) -> np.ndarray:
    """Event time of every row in seconds since midnight of day 0 (``TX_TIME_DAYS == 0``).

    The day comes from TX_TIME_DAYS, the time of day from TX_DATETIME (naive, or
    converted to UTC) or, without it, from :data:`EVENT_TIME_COLUMN` (Unix seconds, as
    the stream logs it); days start at midnight UTC in both.
    """
    days = frame["TX_TIME_DAYS"].to_numpy(np.int64)
    if "TX_DATETIME" in frame.columns:
        times = pd.DatetimeIndex(pd.to_datetime(frame["TX_DATETIME"]))
        if times.tz is not None:
            times = times.tz_convert("UTC").tz_localize(None)
        nanoseconds = times.to_numpy("datetime64[ns]").astype(np.int64)
        of_day = (nanoseconds % (SECONDS_PER_DAY * 10**9)) / 1e9
    elif EVENT_TIME_COLUMN in frame.columns:
        of_day = np.mod(frame[EVENT_TIME_COLUMN].to_numpy(np.float64), SECONDS_PER_DAY)
    else:
        raise ValueError(f"the frame needs TX_DATETIME or {EVENT_TIME_COLUMN} for event times")
    return days * float(SECONDS_PER_DAY) + of_day


def label_known_at(frame: pd.DataFrame) -> np.ndarray:
    """When each row's label becomes known, in seconds since midnight of day 0.

    Event time plus the row's label delay (:func:`models.drift_scenarios.label_delays`: the
    LABEL_DELAY_DAYS column, or 7 days), as the stream emits labels.
    """
    return event_seconds(frame) + label_delays(frame) * SECONDS_PER_DAY


def _windows(
    days: np.ndarray, seconds: np.ndarray, known: np.ndarray, valid_days: int, recipe: Recipe
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and validation windows among the known rows.

    As :func:`models.trainer.split_windows` cuts them with its default end: validation
    is the ``valid_days`` days before the midnight after the latest known row, training
    the ``recipe.train_weeks`` weeks before that.
    """
    rows = np.flatnonzero(known)
    if not len(rows):
        return rows, rows
    end = int(seconds[rows].max() // SECONDS_PER_DAY) + 1
    valid_start = end - valid_days
    train_start = valid_start - 7 * recipe.train_weeks
    known_days = days[rows]
    train = rows[(known_days >= train_start) & (known_days < valid_start)]
    valid = rows[(known_days >= valid_start) & (known_days < end)]
    return train, valid


def label_delay_oracle(
    frame: pd.DataFrame,
    start_day: int,
    end_day: int,
    *,
    recipe: Recipe,
    seed: int = 0,
    valid_days: int = 2,
    init: FraudEnsemble | BinnedMLP | None = None,
    daily_epochs: int | None = None,
    device: Device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Scores of a model retrained every day on the labels known by then.

    Parameters
    ----------
    frame
        Transactions with ``recipe.features``, TX_FRAUD, TX_TIME_DAYS (day index, days
        starting at midnight), TX_DATETIME or ``event_time`` (see
        :func:`event_seconds`) and optionally LABEL_DELAY_DAYS (7 days without it).
    start_day, end_day
        The days ``[start_day, end_day)`` to score.
    recipe
        The retrainer's recipe (windows and training).
    seed
        Seed of every day's training (as the retrainer's one seed).
    valid_days
        Days of known rows for early stopping, the latest ones; training takes the
        ``recipe.train_weeks`` weeks before them.
    init
        The model the first day warm-starts from (e.g. the loop's first served model);
        ``None`` trains the first day from scratch.
    daily_epochs
        Most epochs of a warm-started day (``recipe.max_epochs`` when ``None``); a cold
        first day always gets ``recipe.max_epochs``.
    device
        Where to train, as :func:`models.recipe.fit_fraud_model` takes it.
    progress
        Called after each day with the day index just scored and the number of days.

    Returns
    -------
    numpy.ndarray
        One score a row of ``frame``; NaN outside ``[start_day, end_day)``.

    Raises
    ------
    ValueError
        When the first day has no model to score with: no ``init`` and no training
        window with frauds and genuine rows. A later day whose window cannot train
        keeps the day before's model.

    Notes
    -----
    At the start of day ``d`` a label is known when its event time plus its delay is
    at most ``d`` 00:00. Each day's model warm-starts from the day before's, so it keeps
    the standardisation and bin edges of the first one.
    """
    days = frame["TX_TIME_DAYS"].to_numpy(np.int64)
    seconds = event_seconds(frame)
    known_at = label_known_at(frame)
    labels = frame[TARGET_COLUMN].to_numpy()
    warm = recipe if daily_epochs is None else _with_epochs(recipe, daily_epochs)
    scores = np.full(len(frame), np.nan)
    model = init
    n_days = end_day - start_day
    for day in range(start_day, end_day):
        train, valid = _windows(days, seconds, known_at <= day * SECONDS_PER_DAY,
                                valid_days, recipe)
        if len(valid) and 0 < labels[train].sum() < len(train):
            model = fit_fraud_model(frame.iloc[train], frame.iloc[valid], seed=seed,
                                    device=device, init=model,
                                    recipe=recipe if model is None else warm)
        elif model is None:
            raise ValueError(f"day {day}: no model to start from and the known labels give "
                             f"no training window ({len(train)} rows, {len(valid)} to "
                             "validate) with both frauds and genuine transactions")
        rows = np.flatnonzero(days == day)
        if len(rows):
            scores[rows] = predict(model, frame.iloc[rows], recipe)
        if progress is not None:
            progress(day, n_days)
    return scores


def _with_epochs(recipe: Recipe, epochs: int) -> Recipe:
    if epochs < 1:
        raise ValueError(f"daily_epochs must be >= 1, got {epochs}")
    return replace(recipe, max_epochs=epochs)


def daily_ap(
    scores: np.ndarray, labels: np.ndarray, days: np.ndarray, window_days: int = 3
) -> pd.Series:
    """Average precision of the trailing ``window_days`` days, pooled, for each day.

    Rows without a finite score are left out. The series runs over every day from the
    first to the last of ``days`` (index ``day``); it is NaN where the window holds no
    fraud or no genuine row.
    """
    if window_days < 1:
        raise ValueError(f"window_days must be >= 1, got {window_days}")
    scores = np.asarray(scores, np.float64)
    finite = np.isfinite(scores)
    y = np.asarray(labels)[finite]
    day = np.asarray(days, np.int64)[finite]
    s = scores[finite]
    order = np.argsort(day, kind="stable")
    y, day, s = y[order], day[order], s[order]
    all_days = np.asarray(days, np.int64)
    index = pd.RangeIndex(int(all_days.min()), int(all_days.max()) + 1, name="day") \
        if len(all_days) else pd.RangeIndex(0, name="day")
    values = np.full(len(index), np.nan)
    for i, d in enumerate(index):
        lo, hi = np.searchsorted(day, [d - window_days + 1, d + 1])
        frauds = int(y[lo:hi].sum())
        if 0 < frauds < hi - lo:
            values[i] = average_precision_score(y[lo:hi], s[lo:hi])
    return pd.Series(values, index=index, name="average_precision")


@dataclass(frozen=True)
class Recovery:
    """When the served model came back within reach of the oracle.

    ``days_after`` counts days from the drift's start (``day - start_day``); both are
    ``None`` when the last comparable day still fails. ``served`` and ``oracle`` are the
    trailing-window APs (:func:`daily_ap`) on the rows both scored, for plotting.
    """

    days_after: int | None
    day: int | None
    served: pd.Series
    oracle: pd.Series


def time_to_recover(
    served: np.ndarray,
    oracle: np.ndarray,
    labels: np.ndarray,
    days: np.ndarray,
    start_day: int,
    *,
    tolerance: float = 0.10,
    window_days: int = 3,
) -> Recovery:
    """The first day from which the served AP stays within ``tolerance`` of the oracle's.

    Parameters
    ----------
    served, oracle
        Scores per row (NaN where a model did not score); only rows both scored count.
    labels, days
        TX_FRAUD and TX_TIME_DAYS per row.
    start_day
        The day the drift starts; the search begins there.
    tolerance
        A day passes when served AP >= ``(1 - tolerance)`` x oracle AP.
    window_days
        Trailing window of :func:`daily_ap`.

    Returns
    -------
    Recovery
        The first day ``d >= start_day`` such that every day from ``d`` on, up to the
        last day both APs are defined, passes; ``None`` when that last day fails.
        Days where either AP is undefined are skipped.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    served = np.asarray(served, np.float64)
    oracle = np.asarray(oracle, np.float64)
    both = np.isfinite(served) & np.isfinite(oracle)
    blank = np.where(both, 0.0, np.nan)
    served_ap = daily_ap(served + blank, labels, days, window_days)
    oracle_ap = daily_ap(oracle + blank, labels, days, window_days)
    after = served_ap.index >= start_day
    defined = after & served_ap.notna().to_numpy() & oracle_ap.notna().to_numpy()
    passes = served_ap.to_numpy() >= (1 - tolerance) * oracle_ap.to_numpy()
    failing = served_ap.index[defined & ~passes]
    checked = served_ap.index[defined]
    if not len(checked) or (len(failing) and failing[-1] == checked[-1]):
        return Recovery(None, None, served_ap, oracle_ap)
    day = int(failing[-1]) + 1 if len(failing) else int(start_day)
    return Recovery(day - int(start_day), day, served_ap, oracle_ap)
