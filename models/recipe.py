"""The training recipe of the fraud scorer: its hyper-parameters (:class:`Recipe`), the
fit with early stopping (:func:`fit_fraud_model`), the prior correction
(:func:`match_prior`) and batch prediction (:func:`predict`).

The scorer is a small bag of multilayer perceptrons over the handbook's features
and the stream-exact extras (:data:`models.extra_features.MODEL_FEATURE_COLUMNS`).
Four choices carry its quality:

* **Piecewise-linear encoding** of every input (Gorishniy et al., 2022, "On
  embeddings for numerical features"). Besides its standardised value, each
  feature enters as its position inside each of up to ``n_bins`` bins, so the
  network can place sharp thresholds (an amount rule, a 28-day compromise)
  that a ReLU net on standardised inputs only approximates. Half of the edges
  are training quantiles, half the thresholds of a small decision tree on the
  feature alone, which lands edges where the fraud rate jumps however few rows
  lie beyond them. Edges are buffers of the module, like the standardisation,
  so serving feeds raw features.
* **Several training weeks.** The handbook trains on one week; the recipe
  trains on the ``train_weeks`` weeks before the most recent labelled week and
  stops early on that week, which never overlaps the test week.
* **Balanced bagging.** Each member sees every fraud and its own random
  ``genuine_fraction`` of the genuine rows, with an unweighted loss; members
  are averaged. A constant added to the output logit undoes the undersampling,
  so the scores are calibrated probabilities.
* **Regularisation** (weight decay and dropout): most of the AUC ROC that is
  left to win lies in how the model orders frauds no feature can reveal (a
  terminal compromised less than a week ago) against ordinary transactions,
  where any pattern the model learns is noise.

The network is :mod:`models.binned_mlp`; the recipe's score on the handbook's protocol is
:mod:`models.recipe_quality`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from models.binned_mlp import BinnedMLP, FraudEnsemble
from models.extra_features import MODEL_FEATURE_COLUMNS
from models.reference_features import TARGET_COLUMN
from models.train import Device, pick_device


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of :func:`fit_fraud_model` and of the training window."""

    train_weeks: int = 5
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.2
    n_bins: int = 16
    tree_share: float = 0.5
    n_members: int = 3
    genuine_fraction: float = 0.25
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024
    max_epochs: int = 30
    patience: int = 4
    features: tuple[str, ...] = field(default_factory=lambda: tuple(MODEL_FEATURE_COLUMNS))


DEFAULT_RECIPE = Recipe()


WEIGHT_COLUMN = "SAMPLE_WEIGHT"
"""Optional per-row weight of a training row in the loss (1 without the column)."""


def _xy(frame: pd.DataFrame, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    x = frame[list(recipe.features)].to_numpy(dtype=np.float32)
    return x, frame[TARGET_COLUMN].to_numpy(dtype=np.float32)


def _validation_loss(model: BinnedMLP, x: torch.Tensor, y: torch.Tensor, offset: float) -> float:
    model.eval()
    with torch.no_grad():
        logits = model.logits(x) + offset
        return float(nn.functional.binary_cross_entropy_with_logits(logits, y))


def _train_member(
    model: BinnedMLP,
    x: np.ndarray,
    y: np.ndarray,
    valid: tuple[torch.Tensor, torch.Tensor],
    recipe: Recipe,
    seed: int,
    device: torch.device,
    weights: np.ndarray | None = None,
) -> BinnedMLP:
    """Fit one member on all frauds and a seeded share of the genuine rows."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # Dropout draws from the global generators; seeding them here keeps a
        # member's training repeatable without touching the caller's state.
        torch.manual_seed(seed)
        return _fit_member(model, x, y, valid, recipe, seed, device, weights)


def _fit_member(
    model: BinnedMLP,
    x: np.ndarray,
    y: np.ndarray,
    valid: tuple[torch.Tensor, torch.Tensor],
    recipe: Recipe,
    seed: int,
    device: torch.device,
    weights: np.ndarray | None = None,
) -> BinnedMLP:
    rng = np.random.default_rng(seed)
    keep = (y == 1) | (rng.random(len(y)) < recipe.genuine_fraction)
    features = torch.as_tensor(x[keep], device=device)
    labels = torch.as_tensor(y[keep], device=device).reshape(-1, 1)
    weight = None
    if weights is not None:
        kept = np.asarray(weights, np.float32)[keep]
        weight = torch.as_tensor(kept / kept.mean(), device=device).reshape(-1, 1)
    # Undersampling genuine rows multiplies the odds by 1 / fraction; this undoes it.
    offset = float(np.log(recipe.genuine_fraction))
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    best_loss, best_epoch = float("inf"), 0
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, recipe.max_epochs + 1):
        model.train()
        order = torch.randperm(len(features), generator=generator).to(device)
        for start in range(0, len(order), recipe.batch_size):
            index = order[start : start + recipe.batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = nn.functional.binary_cross_entropy_with_logits(
                model.logits(features[index]), labels[index],
                weight=None if weight is None else weight[index],
            )
            loss.backward()
            optimiser.step()
        loss_now = _validation_loss(model, *valid, offset)
        if loss_now < best_loss:
            best_loss, best_epoch = loss_now, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= recipe.patience:
            break
    model.load_state_dict(best_state)
    model.offset.fill_(offset)
    return model.cpu().eval()


def fit_fraud_model(
    train_df: pd.DataFrame,
    valid_df: pd.DataFrame,
    *,
    seed: int = 0,
    device: Device = "auto",
    init: FraudEnsemble | BinnedMLP | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
) -> FraudEnsemble:
    """Train the fraud scorer.

    Parameters
    ----------
    train_df
        Labelled training rows with ``recipe.features`` and TX_FRAUD, and optionally
        :data:`WEIGHT_COLUMN` (each row's weight in the loss).
    valid_df
        Labelled rows for early stopping (the validation loss), later than the
        training rows and disjoint from any assessment set.
    seed
        Seeds every member's weights, genuine subsample and batch order.
    device
        ``auto`` trains on CUDA when available; the model returned is on the CPU.
    init
        A model of this recipe to warm-start from, never modified: a
        :class:`FraudEnsemble` (each member is fine-tuned) or one
        :class:`BinnedMLP`. Its standardisation and bin edges are kept.
    recipe
        Hyper-parameters.

    Returns
    -------
    FraudEnsemble
        Maps ``[n, len(recipe.features)]`` float32 raw features to ``[n, 1]``
        fraud probabilities, in eval mode.
    """
    torch_device = pick_device(device)
    x, y = _xy(train_df, recipe)
    weights = (train_df[WEIGHT_COLUMN].to_numpy(np.float32) if WEIGHT_COLUMN in train_df
               else None)
    if not 0 < y.sum() < len(y):
        raise ValueError("the training rows need both frauds and genuine transactions")
    x_val, y_val = _xy(valid_df, recipe)
    valid = (
        torch.as_tensor(x_val, device=torch_device),
        torch.as_tensor(y_val, device=torch_device).reshape(-1, 1),
    )
    if init is not None:
        starts = list(init.members) if isinstance(init, FraudEnsemble) else [init]
        members = [cast(BinnedMLP, copy.deepcopy(m)) for m in starts]
    else:
        encoding = BinnedMLP(x.shape[1], (), n_bins=recipe.n_bins).fit_encoding(
            x, y if recipe.tree_share > 0 else None, recipe.tree_share
        )
        fraud_rate, kept = y.mean(), recipe.genuine_fraction
        members = []
        for i in range(recipe.n_members):
            member = BinnedMLP(x.shape[1], recipe.hidden, recipe.dropout, recipe.n_bins, seed + i)
            for name in ("mean", "std", "lower", "width", "used"):
                getattr(member, name).copy_(getattr(encoding, name))
            member.start_at_rate(float(fraud_rate / (fraud_rate + (1 - fraud_rate) * kept)))
            members.append(member)
    trained = [
        _train_member(member, x, y, valid, recipe, seed + i, torch_device, weights)
        for i, member in enumerate(members)
    ]
    return FraudEnsemble(trained).eval()


def match_prior(model: FraudEnsemble, frame: pd.DataFrame, recipe: Recipe = DEFAULT_RECIPE
                ) -> FraudEnsemble:
    """Move each member's ``offset`` so that its mean probability on ``frame`` (labelled
    rows drawn as the traffic is) equals their fraud rate: the prior correction of a
    model trained on rows richer in frauds than the traffic (investigators' feedback),
    which leaves its ranking as it is. In place; returns ``model``."""
    x, y = _xy(frame, recipe)
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    features = torch.as_tensor(x)
    with torch.no_grad():
        for member in cast(Sequence[BinnedMLP], model.members):
            logits = member.logits(features).ravel().double()
            low, high = -30.0, 30.0
            for _ in range(60):
                middle = (low + high) / 2
                if float(torch.sigmoid(logits + middle).mean()) > rate:
                    high = middle
                else:
                    low = middle
            member.offset.fill_((low + high) / 2)
    return model


def predict(model: nn.Module, frame: pd.DataFrame, recipe: Recipe = DEFAULT_RECIPE) -> np.ndarray:
    """Fraud probabilities of the rows of ``frame``, in batches, on the CPU."""
    x = torch.as_tensor(frame[list(recipe.features)].to_numpy(dtype=np.float32))
    model.eval()
    with torch.no_grad():
        return np.concatenate(
            [model(x[i : i + 65536]).numpy().ravel() for i in range(0, len(x), 65536)]
        ).astype(np.float64)
