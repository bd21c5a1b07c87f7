"""Train, publish and register one model version.

:func:`train_version` is the one way a version comes to be: it cuts the training and
validation windows from a labelled frame, fits :func:`models.recipe.fit_fraud_model`,
publishes the ONNX export as the next Triton version and records it in the
:class:`~models.registry.Registry` as a candidate, with its lineage, recipe and its
quality on the validation window. The frame comes from the simulator
(:func:`frame_from_simulator`) or from the stream's offline feature log with the labels
known so far (:func:`models.feature_log.frame_from_feature_log`).

The torch weights are kept beside the registry entries (``<registry>/weights/<n>.pt``)
so that a later version can warm-start from its parent.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.binned_mlp import BinnedMLP, FraudEnsemble
from models.evaluation import assess
from models.export import publish_version
from models.extra_features import add_model_features
from models.model_version import ModelVersion, Trigger, Window
from models.recipe import DEFAULT_RECIPE, Recipe, fit_fraud_model, match_prior, predict
from models.reference_features import TARGET_COLUMN
from models.registry import Registry, write_text_atomic
from models.simulator import SECONDS_PER_DAY
from models.train import Device
from models.triton_config import MODEL_NAME, ConfigError, read_model_config

FRAME_COLUMNS = ("TX_DATETIME", "TX_TIME_DAYS", "CUSTOMER_ID", TARGET_COLUMN)
"""Columns :func:`train_version` needs besides the recipe's features."""


def _day(value: str | pd.Timestamp) -> pd.Timestamp:
    """A naive UTC timestamp (the frames' TX_DATETIME convention)."""
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp


def _window(rows: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> Window:
    return Window(start=start.isoformat(), end=end.isoformat(), rows=len(rows),
                  frauds=int(rows[TARGET_COLUMN].sum()))


def split_windows(
    frame: pd.DataFrame,
    *,
    valid_days: int = 7,
    recipe: Recipe = DEFAULT_RECIPE,
    end: str | pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, Window, Window]:
    """Training and validation rows of ``frame`` before ``end``.

    Validation is ``[end - valid_days, end)``; training is the ``recipe.train_weeks``
    weeks before it. ``end`` defaults to the midnight after the last transaction.

    Returns
    -------
    tuple
        ``(train, valid, train_window, valid_window)``.
    """
    missing = [c for c in (*FRAME_COLUMNS, *recipe.features) if c not in frame.columns]
    if missing:
        raise ValueError(f"the training frame lacks the columns {missing}")
    times = pd.DatetimeIndex(frame["TX_DATETIME"])
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
    stop = _day(end) if end is not None else times.max().normalize() + pd.Timedelta(days=1)
    valid_start = stop - pd.Timedelta(days=valid_days)
    train_start = valid_start - pd.Timedelta(weeks=recipe.train_weeks)
    in_train = (times >= train_start) & (times < valid_start)
    in_valid = (times >= valid_start) & (times < stop)
    train, valid = frame[in_train], frame[in_valid]
    train_window = _window(train, train_start, valid_start)
    valid_window = _window(valid, valid_start, stop)
    for name, window in (("training", train_window), ("validation", valid_window)):
        if not 0 < window.frauds < window.rows:
            raise ValueError(
                f"the {name} window {window.start} .. {window.end} has {window.rows} rows and "
                f"{window.frauds} frauds; it needs both frauds and genuine transactions"
            )
    return train, valid, train_window, valid_window


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as JSON stores it (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(recipe).items()}


def weights_path(registry: Registry, version: int) -> Path:
    """Where the torch weights of a version are kept."""
    return registry.root / "weights" / f"{version}.pt"


def save_weights(model: FraudEnsemble, path: Path, recipe: Recipe) -> None:
    """Keep a model's state and the recipe that shapes it (for warm starts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "recipe": recipe_dict(recipe),
                "n_features": len(recipe.features)}, partial)
    partial.replace(path)


def load_weights(path: Path) -> tuple[FraudEnsemble, Recipe]:
    """The model saved by :func:`save_weights` and its recipe."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in saved["recipe"].items()}
    recipe = Recipe(**values)
    members = [BinnedMLP(saved["n_features"], recipe.hidden, recipe.dropout, recipe.n_bins)
               for _ in range(recipe.n_members)]
    model = FraudEnsemble(members)
    model.load_state_dict(saved["state_dict"])
    return model.eval(), recipe


def _check_contract(repo_dir: Path, recipe: Recipe) -> None:
    """Fail before training when the Triton config does not take the recipe's rows."""
    config_path = repo_dir / MODEL_NAME / "config.pbtxt"
    dims = read_model_config(config_path).input.dims
    if dims != (len(recipe.features),):
        raise ConfigError(
            f"{config_path} takes rows of {list(dims)} features but the recipe has "
            f"{len(recipe.features)}: {list(recipe.features)}"
        )


def train_version(
    frame: pd.DataFrame,
    *,
    registry: Registry,
    repo_dir: Path | str,
    trigger: Trigger,
    parent: int | None = None,
    valid_days: int = 7,
    recipe: Recipe = DEFAULT_RECIPE,
    seed: int = 0,
    device: Device = "auto",
    end: str | pd.Timestamp | None = None,
    warm_start: bool = False,
    feedback: pd.DataFrame | None = None,
    feedback_share: float = 0.5,
    score_reference: pd.DataFrame | None = None,
) -> ModelVersion:
    """Train a model on ``frame``, publish it as the next version and register it.

    Parameters
    ----------
    frame
        Labelled transactions with ``recipe.features`` and :data:`FRAME_COLUMNS`.
    registry
        Where the version is recorded (status ``candidate``).
    repo_dir
        The Triton model repository the version is published to.
    trigger
        Why this version is trained.
    parent
        The version it is meant to replace; must be recorded.
    valid_days, recipe, end
        The windows, as :func:`split_windows` cuts them.
    seed, device
        As for :func:`models.recipe.fit_fraud_model`.
    warm_start
        Start from the parent's weights (its recipe must shape the same network).
    feedback, feedback_share
        Rows labelled by investigators (the cards reviewed, days before their delayed
        labels), trained on beside the training window, together carrying
        ``feedback_share`` of the loss's weight. Dal Pozzolo et al. (2017) learn the
        feedback and the delayed labels apart and average the two posteriors with
        equal weight, since the few recent feedback labels say most about the newest
        frauds; weighting the two sets alike in one model follows the same idea.
    score_reference
        Rows with ``recipe.features``, labelled or not, that the model did not train
        on, whose scores are the score monitor's reference (see
        :func:`models.feature_log.recent_rows`); by default the validation rows. A
        model's scores move with the weekday (the weekend flag is an input), so a
        reference of a whole week judges a Saturday against Saturdays, where two
        validation days may hold none.

    Returns
    -------
    ModelVersion
        The recorded entry; metrics are on the validation window (which also chose
        the early-stopping epoch, so they flatter the model a little).
    """
    repo_dir = Path(repo_dir)
    _check_contract(repo_dir, recipe)
    init = None
    if parent is not None:
        registry.get(parent)  # an unknown parent fails here, before training
    if warm_start:
        if parent is None:
            raise ValueError("warm_start needs a parent version")
        path = weights_path(registry, parent)
        if not path.exists():
            raise FileNotFoundError(f"no weights of version {parent} at {path}; "
                                    "train from scratch instead")
        init, parent_recipe = load_weights(path)
        shape = ("features", "hidden", "n_bins", "n_members")
        differ = [k for k in shape if getattr(parent_recipe, k) != getattr(recipe, k)]
        if differ:
            raise ValueError(f"cannot warm-start from version {parent}: its recipe differs "
                             f"in {differ}")
    train, valid, train_window, valid_window = split_windows(
        frame, valid_days=valid_days, recipe=recipe, end=end
    )
    fit_rows = train
    with_verdicts = feedback is not None and len(feedback) > 0 and 0 < feedback_share < 1
    if with_verdicts:
        assert feedback is not None
        fit_rows = with_feedback(train, feedback, feedback_share)
    started = time.perf_counter()
    model = fit_fraud_model(fit_rows, valid, seed=seed, device=device, init=init, recipe=recipe)
    if with_verdicts:
        # Reviewed cards are far richer in frauds than the traffic: back to its prior.
        match_prior(model, valid, recipe)
    seconds = time.perf_counter() - started
    quality = assess(valid, predict(model, valid, recipe))
    metrics = {k: round(v, 6) for k, v in quality.as_dict().items()}
    version = registry.reserve(repo_dir)
    try:
        publish_version(model, repo_dir, version)
        save_weights(model, weights_path(registry, version), recipe)
        # The features' reference is the training rows; the score's, the validation
        # rows the model did not fit (its scores on its own rows are surer).
        both = pd.concat([train, valid], ignore_index=True)
        reference_scores = None
        if score_reference is not None and len(score_reference) >= MIN_SCORE_REFERENCE_ROWS:
            reference_scores = predict(model, score_reference, recipe)
        save_training_profile(registry.profile_path(version), both,
                              predict(model, both, recipe), recipe,
                              frame.attrs.get("history_start", _first_time(frame)),
                              score_rows=np.arange(len(both)) >= len(train),
                              reference_scores=reference_scores)
        entry = ModelVersion(
            version=version, parent=parent, trigger=trigger, window=train_window,
            recipe=recipe_dict(recipe),
            metrics={**metrics, "k": 100, "window": asdict(valid_window),
                     "feedback_rows": len(feedback) if with_verdicts and feedback is not None
                     else 0},
            warm_start=warm_start, train_seconds=round(seconds, 3),
            features=list(recipe.features),
        )
        return registry.record(entry)
    except BaseException:
        registry.release(version)
        raise


def with_feedback(train: pd.DataFrame, feedback: pd.DataFrame, share: float) -> pd.DataFrame:
    """``train`` and ``feedback`` in one frame whose :data:`~models.recipe.WEIGHT_COLUMN`
    gives the feedback rows ``share`` of the total weight (each training row weighs 1)."""
    from models.recipe import WEIGHT_COLUMN

    weight = share / (1 - share) * len(train) / len(feedback)
    return pd.concat([train.assign(**{WEIGHT_COLUMN: 1.0}),
                      feedback.assign(**{WEIGHT_COLUMN: weight})], ignore_index=True)


def _first_time(frame: pd.DataFrame) -> float:
    return float(frame["TX_DATETIME"].min().timestamp())


def save_training_profile(path: Path, rows: pd.DataFrame, scores: np.ndarray,
                          recipe: Recipe, history_start: float | None = None,
                          score_rows: np.ndarray | None = None,
                          reference_scores: np.ndarray | None = None) -> Path:
    """The reference the drift monitors compare live rows with: histograms, extremes and
    a KS sample of every feature (under its feature-log name) and of the score, over the
    training rows whose windows were complete (:func:`models.extra_features.warm_up_days`
    after ``history_start``, the first event the features were computed from; by default
    the earliest of ``rows``); the score's only over ``score_rows`` (a mask: the held-out
    rows) when given, or on ``reference_scores`` (scores of other held-out rows) when
    those are given. Written atomically to ``path``."""
    from models.extra_features import (
        SCORE_WARM_UP_DAYS,
        SERVING_NAMES,
        feature_entity,
        warm_up_days,
    )
    from models.reference_profile import Histogram, ReferenceProfile

    times = rows["TX_DATETIME"].to_numpy("datetime64[s]").astype(np.int64).astype(np.float64)
    start = float(times.min()) if history_start is None else float(history_start)
    profile = ReferenceProfile.from_frame(
        rows[list(recipe.features)].to_numpy(np.float32),
        [SERVING_NAMES[c] for c in recipe.features], np.asarray(scores),
        event_times=times, history_start=start,
        warm_up_s=[warm_up_days(c) * SECONDS_PER_DAY for c in recipe.features],
        score_warm_up_s=SCORE_WARM_UP_DAYS * SECONDS_PER_DAY,
        entities=[feature_entity(c) for c in recipe.features], score_rows=score_rows)
    if reference_scores is not None:
        profile = dataclasses.replace(
            profile, score=Histogram.from_values(np.asarray(reference_scores), profile.bins))
    return write_text_atomic(path, profile.to_json())


def frame_from_simulator(
    customers: int = 300, terminals: int = 600, days: int = 60, seed: int = 0
) -> pd.DataFrame:
    """Simulated labelled transactions with every model feature.

    ``seed`` seeds the customer profiles and ``seed + 1`` the terminals (the
    handbook's 0 and 1 for ``seed=0``).
    """
    from models.simulator import simulate

    raw = simulate(n_customers=customers, n_terminals=terminals, nb_days=days,
                   seed_customers=seed, seed_terminals=seed + 1)
    return add_model_features(raw)


MIN_SCORE_REFERENCE_ROWS = 1000
"""Fewest rows :func:`train_version` profiles the score on (as the monitors' own floor)."""
