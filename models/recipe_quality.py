"""The recipe's score on the handbook's protocol: its training windows
(:func:`training_window`) and its quality on the prequential test
(:func:`prequential_quality`).
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import pandas as pd

from models.evaluation import PrequentialResult, evaluate_prequential, prequential_start
from models.extra_features import add_model_features
from models.recipe import DEFAULT_RECIPE, Recipe, fit_fraud_model, predict
from models.train import Device


def training_window(
    transactions: pd.DataFrame, block_start_day: int, recipe: Recipe = DEFAULT_RECIPE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training and validation rows for a handbook training block starting on a day.

    Validation is the block itself, ``[s, s + 7)``, the most recent labelled week
    before the delay week; training is the ``recipe.train_weeks`` weeks before it.
    """
    days = transactions["TX_TIME_DAYS"].to_numpy()
    train = (days >= block_start_day - 7 * recipe.train_weeks) & (days < block_start_day)
    valid = (days >= block_start_day) & (days < block_start_day + 7)
    return transactions[train], transactions[valid]


def prequential_quality(
    df: pd.DataFrame,
    *,
    seed: int = 0,
    device: Device = "auto",
    recipe: Recipe = DEFAULT_RECIPE,
) -> dict[str, object]:
    """Assess the recipe on the handbook's prequential test (four weekly folds).

    The test sets are exactly the handbook's (:func:`models.evaluation.evaluate_prequential`
    from :func:`prequential_start` ``("test")``: test weeks from 2018-08-08 to
    09-04, known compromised cards removed); only the training rows differ, as
    :func:`training_window` describes.

    Parameters
    ----------
    df
        The transactions, raw or already with :data:`~models.extra_features.MODEL_FEATURE_COLUMNS`.
    seed, device, recipe
        As for :func:`fit_fraud_model`.

    Returns
    -------
    dict
        ``mean`` and ``std`` (population) of ``auc_roc``, ``average_precision``
        and ``card_precision_at_k`` (k = 100), ``folds`` (per fold, fold 0 is the
        latest test week), ``seconds`` and the ``recipe``.
    """
    if not set(recipe.features) <= set(df.columns):
        df = add_model_features(df)
    started = time.perf_counter()

    def fit_predict(block: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
        train, valid = training_window(df, int(block["TX_TIME_DAYS"].min()), recipe)
        model = fit_fraud_model(train, valid, seed=seed, device=device, recipe=recipe)
        return predict(model, test, recipe)

    result = evaluate_prequential(fit_predict, df, prequential_start("test"))
    return summarise(result) | {
        "seconds": time.perf_counter() - started,
        "recipe": asdict(recipe),
    }


def summarise(result: PrequentialResult) -> dict[str, object]:
    """A prequential result as plain dictionaries of floats."""
    return {
        "mean": result.mean.as_dict(),
        "std": result.std.as_dict(),
        "folds": [fold.as_dict() for fold in result.folds],
    }
