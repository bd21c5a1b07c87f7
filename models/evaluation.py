"""Evaluation protocol of the Fraud Detection Handbook (Chapters 3.4, 4 and 5).

A model is evaluated on weekly blocks: it trains on ``delta_train`` days,
waits ``delta_delay`` days for labels (a block never used) and is assessed on
the next ``delta_test`` days, from which cards already known to be compromised
are removed. Prequential evaluation repeats this layout over folds shifted back
one assessment block each, retraining per fold, and reports the mean and the
population standard deviation of AUC ROC, average precision and card
precision@k.

Models enter as a :data:`FitPredict` callable, ``(train, test) -> scores``, so
that any learner (scikit-learn, torch, a constant baseline) can be assessed the
same way; :func:`sklearn_fit_predict` builds one from a scikit-learn estimator.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from models.reference_features import FEATURE_COLUMNS, TARGET_COLUMN

FitPredict = Callable[[pd.DataFrame, pd.DataFrame], np.ndarray]
"""Fit on a training frame, return fraud scores for the rows of a test frame."""

BASELINE_TRAIN_START = "2018-07-25"
"""Training start of the handbook's single split (test 2018-08-08..14)."""


@dataclass(frozen=True)
class Metrics:
    """Threshold-free and top-k metrics of one assessment set."""

    auc_roc: float
    average_precision: float
    card_precision_at_k: float

    def as_dict(self) -> dict[str, float]:
        """Return the metrics keyed by name."""
        return {
            "auc_roc": self.auc_roc,
            "average_precision": self.average_precision,
            "card_precision_at_k": self.card_precision_at_k,
        }


@dataclass(frozen=True)
class CardPrecision:
    """Daily card precision@k and the compromised cards left each day."""

    per_day: list[float]
    compromised_cards_per_day: list[int]

    @property
    def mean(self) -> float:
        """Card precision@k averaged over days."""
        return float(np.mean(self.per_day))


@dataclass(frozen=True)
class PrequentialResult:
    """Metrics of every fold, their mean and population standard deviation."""

    folds: list[Metrics]
    mean: Metrics
    std: Metrics


def remove_known_compromised_cards(
    transactions: pd.DataFrame,
    train_start_day: int,
    delta_train: int = 7,
    delta_delay: int = 7,
    delta_test: int = 7,
) -> pd.DataFrame:
    """Return the test days' transactions of cards not yet known as compromised.

    Test day ``i`` has day index ``s + delta_train + delta_delay + i`` where
    ``s = train_start_day``. Its known set holds every card with a fraud on a
    day in ``[s, s + delta_train + i - 1]``: the training frauds plus those
    whose label arrived after the delay. With 7-day blocks, test day ``D``
    excludes the cards defrauded on ``[s, D - 8]``; frauds before ``s`` are
    not treated as known. All transactions of a known card are dropped.
    """
    days = transactions["TX_TIME_DAYS"].to_numpy()
    first_test_day = train_start_day + delta_train + delta_delay
    frauds = transactions[
        (transactions[TARGET_COLUMN] == 1)
        & (days >= train_start_day)
        & (days < train_start_day + delta_train + delta_test - 1)
    ]
    first_fraud_day = frauds.groupby("CUSTOMER_ID")["TX_TIME_DAYS"].min()
    test = transactions[(days >= first_test_day) & (days < first_test_day + delta_test)]
    known_since = test["CUSTOMER_ID"].map(first_fraud_day)
    known = known_since <= test["TX_TIME_DAYS"] - delta_delay - 1
    return test[~known.to_numpy()]


def train_test_split_by_dates(
    transactions: pd.DataFrame,
    start_date_training: str | datetime.date | pd.Timestamp,
    delta_train: int = 7,
    delta_delay: int = 7,
    delta_test: int = 7,
    sampling_ratio: float = 1.0,
    random_state: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into a training block and a delayed, known-card-filtered test block.

    Parameters
    ----------
    transactions
        Transactions with TX_DATETIME, TX_TIME_DAYS, CUSTOMER_ID, TX_FRAUD
        and TRANSACTION_ID.
    start_date_training
        First day of training; training is
        ``start <= TX_DATETIME < start + delta_train days``.
    delta_train, delta_delay, delta_test
        Block lengths in days.
    sampling_ratio
        Fraction of the training frauds and, separately, of the genuine
        training transactions to keep (the repeated hold-out's stratified
        subsample), drawn with pandas ``sample(random_state=random_state)``.
        Cards are marked known before subsampling.
    random_state
        Seed of the subsample.

    Returns
    -------
    tuple of pandas.DataFrame
        Training and test sets, each sorted by TRANSACTION_ID.
    """
    start = pd.Timestamp(start_date_training)
    dt = transactions["TX_DATETIME"]
    train = transactions[(dt >= start) & (dt < start + pd.Timedelta(days=delta_train))]
    if train.empty:
        raise ValueError(f"no transaction in the training block starting {start.date()}")
    test = remove_known_compromised_cards(
        transactions, int(train["TX_TIME_DAYS"].min()), delta_train, delta_delay, delta_test
    )
    if sampling_ratio < 1:
        train = pd.concat(
            [
                train[train[TARGET_COLUMN] == 1].sample(
                    frac=sampling_ratio, random_state=random_state
                ),
                train[train[TARGET_COLUMN] == 0].sample(
                    frac=sampling_ratio, random_state=random_state
                ),
            ]
        )
    return (
        train.sort_values("TRANSACTION_ID", kind="stable"),
        test.sort_values("TRANSACTION_ID", kind="stable"),
    )


def prequential_start(
    mode: Literal["validation", "test"],
    base_start: str | datetime.date | pd.Timestamp = BASELINE_TRAIN_START,
    n_folds: int = 4,
    delta_delay: int = 7,
    delta_assessment: int = 7,
) -> pd.Timestamp:
    """Training start of fold 0 for prequential validation or test.

    Validation shifts the baseline layout back by ``delta_delay +
    delta_assessment`` days (2018-07-11); test shifts it forward by
    ``(n_folds - 1) * delta_assessment`` days (2018-08-15), so that the last
    test fold is the baseline test week.
    """
    base = pd.Timestamp(base_start)
    if mode == "validation":
        return base - pd.Timedelta(days=delta_delay + delta_assessment)
    return base + pd.Timedelta(days=(n_folds - 1) * delta_assessment)


def prequential_splits(
    transactions: pd.DataFrame,
    start_date_training: str | datetime.date | pd.Timestamp,
    n_folds: int = 4,
    delta_train: int = 7,
    delta_delay: int = 7,
    delta_assessment: int = 7,
) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Build the prequential folds; fold ``f`` starts ``f * delta_assessment`` days earlier."""
    start = pd.Timestamp(start_date_training)
    return [
        train_test_split_by_dates(
            transactions,
            start - pd.Timedelta(days=fold * delta_assessment),
            delta_train,
            delta_delay,
            delta_assessment,
        )
        for fold in range(n_folds)
    ]


def card_precision_at_k(
    transactions: pd.DataFrame,
    scores: np.ndarray | Sequence[float],
    k: int = 100,
    remove_detected: bool = True,
) -> CardPrecision:
    """Compute the handbook's daily card precision@k.

    Day by day, in increasing TX_TIME_DAYS, transactions of cards detected on
    earlier days are removed; each remaining card gets its maximum score and is
    compromised if any of its transactions that day is a fraud; the k
    highest-scored cards are inspected and CP@k(day) is the number of
    compromised ones divided by k (even when fewer than k cards exist). The
    compromised cards found join the detected set.

    Ties between equal card scores are broken by ascending CUSTOMER_ID (a
    stable sort). The handbook uses pandas' non-stable default sort, so models
    with few distinct scores (trees, constant predictors) can differ from its
    figures by about 0.002.
    """
    frame = pd.DataFrame(
        {
            "CUSTOMER_ID": transactions["CUSTOMER_ID"].to_numpy(),
            "TX_FRAUD": transactions[TARGET_COLUMN].to_numpy(),
            "TX_TIME_DAYS": transactions["TX_TIME_DAYS"].to_numpy(),
            "score": np.asarray(scores, dtype=np.float64),
        }
    )
    detected: set[int] = set()
    per_day: list[float] = []
    compromised: list[int] = []
    for _, day in frame.groupby("TX_TIME_DAYS", sort=True):
        day = day[~day["CUSTOMER_ID"].isin(detected)]
        cards = day.groupby("CUSTOMER_ID", sort=True)[["score", "TX_FRAUD"]].max()
        compromised.append(int((cards["TX_FRAUD"] == 1).sum()))
        top = cards.sort_values("score", ascending=False, kind="stable").head(k)
        found = top.index[top["TX_FRAUD"] == 1]
        per_day.append(len(found) / k)
        if remove_detected:
            detected.update(found.tolist())
    return CardPrecision(per_day=per_day, compromised_cards_per_day=compromised)


def assess(
    transactions: pd.DataFrame, scores: np.ndarray | Sequence[float], k: int = 100
) -> Metrics:
    """AUC ROC and average precision (pooled over days) and daily-mean CP@k."""
    y = transactions[TARGET_COLUMN].to_numpy()
    scores = np.asarray(scores, dtype=np.float64)
    return Metrics(
        auc_roc=float(roc_auc_score(y, scores)),
        average_precision=float(average_precision_score(y, scores)),
        card_precision_at_k=card_precision_at_k(transactions, scores, k).mean,
    )


def sklearn_fit_predict(
    make_estimator: Callable[[], Any] | Any,
    features: Sequence[str] = tuple(FEATURE_COLUMNS),
    scale: bool = True,
) -> FitPredict:
    """Wrap a scikit-learn classifier as a :data:`FitPredict`.

    Parameters
    ----------
    make_estimator
        An unfitted estimator (cloned at every fit) or a factory returning one.
    features
        Input columns.
    scale
        Standardise inputs with a StandardScaler fitted on the training set,
        as the handbook does for every model.

    Returns
    -------
    FitPredict
        A callable returning ``predict_proba(test)[:, 1]``.
    """
    columns = list(features)

    def fit_predict(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
        model = make_estimator() if callable(make_estimator) else clone(make_estimator)
        x_train = train[columns].to_numpy(dtype=np.float64)
        x_test = test[columns].to_numpy(dtype=np.float64)
        if scale:
            scaler = StandardScaler().fit(x_train)
            x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
        model.fit(x_train, train[TARGET_COLUMN].to_numpy())
        return model.predict_proba(x_test)[:, 1]

    return fit_predict


def evaluate_split(
    fit_predict: FitPredict, train: pd.DataFrame, test: pd.DataFrame, k: int = 100
) -> Metrics:
    """Fit on ``train``, score ``test`` and assess the scores."""
    return assess(test, fit_predict(train, test), k)


def evaluate_prequential(
    fit_predict: FitPredict,
    transactions: pd.DataFrame,
    start_date_training: str | datetime.date | pd.Timestamp,
    n_folds: int = 4,
    delta_train: int = 7,
    delta_delay: int = 7,
    delta_assessment: int = 7,
    k: int = 100,
) -> PrequentialResult:
    """Retrain and assess on every prequential fold.

    Use :func:`prequential_start` for the handbook's fold-0 training starts
    (validation 2018-07-11, test 2018-08-15). The standard deviation is the
    population one (ddof = 0), as in scikit-learn's GridSearchCV.
    """
    folds = [
        evaluate_split(fit_predict, train, test, k)
        for train, test in prequential_splits(
            transactions, start_date_training, n_folds, delta_train, delta_delay, delta_assessment
        )
    ]
    table = np.array([list(m.as_dict().values()) for m in folds])
    return PrequentialResult(
        folds=folds,
        mean=Metrics(*table.mean(axis=0).tolist()),
        std=Metrics(*table.std(axis=0, ddof=0).tolist()),
    )
