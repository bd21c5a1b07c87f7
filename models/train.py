"""Training of the fraud MLP, and a synthetic data set for the walking skeleton.

Fraud is rare (a few percent of transactions), so the loss weights positives by
``negatives / positives``. With a validation fold, training stops once the validation
loss has not improved for ``patience`` epochs and the best weights are kept. Training
runs on CUDA when a GPU is there and on the CPU otherwise; the returned model always
lives on the CPU, ready for export.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from models.mlp import FraudMLP
from models.triton_config import read_model_config

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]

_WORLD_SEED = 20240901


@dataclass
class TrainResult:
    """A trained model and how training went."""

    model: FraudMLP
    best_epoch: int
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    pos_weight: float = 1.0
    device: str = "cpu"
    seconds: float = 0.0


def pick_device(device: Device = "auto") -> torch.device:
    """``cuda`` when asked or when ``auto`` finds a GPU, else ``cpu``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def positive_weight(y: np.ndarray) -> float:
    """``negatives / positives``, or 1 when a class is missing."""
    positives = int(np.count_nonzero(y))
    negatives = len(y) - positives
    return negatives / positives if positives and negatives else 1.0


def _tensors(
    X: np.ndarray, y: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.as_tensor(np.asarray(X, dtype=np.float32), device=device)
    labels = torch.as_tensor(np.asarray(y, dtype=np.float32).reshape(-1, 1), device=device)
    if features.ndim != 2 or len(features) != len(labels):
        shape = tuple(features.shape)
        raise ValueError(f"X must be [n, features] and y [n]; got {shape} and {len(labels)}")
    return features, labels


def train_mlp(
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 20,
    seed: int = 0,
    hidden: tuple[int, ...] = (64, 32),
    dropout: float = 0.0,
    batch_size: int = 1024,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    patience: int = 3,
    init: FraudMLP | None = None,
    device: Device = "auto",
) -> TrainResult:
    """Train a :class:`FraudMLP` with a class-weighted binary cross-entropy.

    Parameters
    ----------
    X, y
        Training features ``[n, n_features]`` and 0/1 labels ``[n]``.
    epochs
        Upper bound on passes over the training data.
    seed
        Seeds weight initialisation and batch order.
    hidden, dropout
        Shape of a freshly built model; ignored when ``init`` is given.
    batch_size, lr, weight_decay
        Adam mini-batch settings.
    X_val, y_val
        A validation fold; when given, early stopping keeps the weights of the epoch
        with the lowest validation loss.
    patience
        Epochs without validation improvement before stopping.
    init
        A model to warm-start from (the champion). It is copied, never modified, and
        keeps its standardisation so its learned weights stay meaningful.
    device
        ``auto`` uses CUDA when available.
    """
    started = time.perf_counter()
    torch_device = pick_device(device)
    if init is not None:
        model = copy.deepcopy(init)
    else:
        model = FraudMLP(np.asarray(X).shape[1], hidden=hidden, dropout=dropout, seed=seed)
        model.fit_scaler(X)
    model.to(torch_device)

    features, labels = _tensors(X, y, torch_device)
    validation = None
    if X_val is not None and y_val is not None:
        validation = _tensors(X_val, y_val, torch_device)
    pos_weight = positive_weight(np.asarray(y))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], device=torch_device))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)

    result = TrainResult(model=model, best_epoch=0, pos_weight=pos_weight, device=str(torch_device))
    best_loss, best_state = float("inf"), copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(features), generator=generator).to(torch_device)
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model.logits(features[index]), labels[index])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(index)
        result.train_loss.append(total / len(order))

        if validation is None:
            result.best_epoch = epoch
            continue
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model.logits(validation[0]), validation[1]))
        result.val_loss.append(val_loss)
        log.debug("epoch %d train %.5f val %.5f", epoch, result.train_loss[-1], val_loss)
        if val_loss < best_loss:
            best_loss, result.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - result.best_epoch >= patience:
            break

    if validation is not None:
        model.load_state_dict(best_state)
    result.model = model.cpu().eval()
    result.seconds = time.perf_counter() - started
    return result


def synthetic_dataset(
    n: int, seed: int, *, n_features: int | None = None, fraud_rate: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """A small labelled data set in which fraud depends on the features.

    Columns have very different scales (as amounts and counts do), so standardisation
    matters. The label is a noisy threshold on a linear score plus one interaction,
    set so that about ``fraud_rate`` of the rows are fraud.

    Parameters
    ----------
    n
        Number of rows.
    seed
        Seed of the generator; the same seed gives the same data.
    n_features
        Row width; by default the model contract's (``config.pbtxt``).
    fraud_rate
        Share of positive labels.

    Returns
    -------
    tuple
        ``X`` float32 ``[n, n_features]`` and ``y`` int64 ``[n]`` with values 0 or 1.
    """
    width = n_features if n_features is not None else read_model_config().n_features
    # The distribution is fixed; the seed only draws rows from it, so data sets made
    # with different seeds can train and validate the same model.
    world = np.random.default_rng(_WORLD_SEED)
    scales = 10.0 ** world.uniform(-1.0, 3.0, size=width)
    offsets = world.normal(0.0, 2.0, size=width) * scales
    weights = world.normal(0.0, 1.0, size=width) * (world.random(width) < 0.6)
    threshold = _threshold(world, weights, fraud_rate)

    rng = np.random.default_rng(seed)
    standard = rng.standard_normal((n, width))
    X = (standard * scales + offsets).astype(np.float32)
    y = (_risk(standard, weights, rng) > threshold).astype(np.int64)
    return X, y


def _risk(standard: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    score = standard @ weights + rng.logistic(0.0, 0.5, size=len(standard))
    if standard.shape[1] >= 2:
        score += 1.5 * standard[:, 0] * standard[:, 1]
    return score


def _threshold(world: np.random.Generator, weights: np.ndarray, fraud_rate: float) -> float:
    sample = world.standard_normal((100_000, len(weights)))
    return float(np.quantile(_risk(sample, weights, world), 1.0 - fraud_rate))
