"""The network of the fraud scorer: :class:`BinnedMLP`, a ReLU MLP over standardised
features and their piecewise-linear encoding, and :class:`FraudEnsemble`, the mean of a
bag of them.

The standardisation, the bin edges and the undersampling offset are buffers of the
module, so they are saved with the weights and exported into the ONNX graph: serving
feeds raw features. :mod:`models.recipe` fits them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
from sklearn.tree import DecisionTreeClassifier
from torch import nn

MIN_STD = 1e-6


class BinnedMLP(nn.Module):
    """Standardised features plus their piecewise-linear encoding, then a ReLU MLP.

    The probability is ``sigmoid(logits(x) + offset)``; the ``offset`` buffer
    undoes the undersampling of genuine rows during training.

    Parameters
    ----------
    n_features
        Width of one input row.
    hidden
        Widths of the hidden layers.
    dropout
        Dropout after each hidden layer while training.
    n_bins
        Most bins per feature; features with fewer distinct edges get fewer.
    seed
        Seeds the weight initialisation without touching the global random state.
    """

    mean: torch.Tensor
    std: torch.Tensor
    lower: torch.Tensor
    width: torch.Tensor
    used: torch.Tensor
    offset: torch.Tensor

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.1,
        n_bins: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_features, self.n_bins = n_features, n_bins
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.register_buffer("lower", torch.zeros(n_features, n_bins))
        self.register_buffer("width", torch.ones(n_features, n_bins))
        self.register_buffer("used", torch.zeros(n_features, n_bins))
        self.register_buffer("offset", torch.zeros(()))
        layers: list[nn.Module] = []
        width = n_features * (n_bins + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for size in hidden:
                layers += [nn.Linear(width, size), nn.ReLU()]
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
                width = size
            layers.append(nn.Linear(width, 1))
            self.net = nn.Sequential(*layers)

    def fit_encoding(
        self, features: np.ndarray, labels: np.ndarray | None = None, tree_share: float = 0.5
    ) -> BinnedMLP:
        """Set standardisation and bin edges from training features; returns ``self``.

        Without ``labels`` the edges are quantiles. With them, a ``tree_share``
        of the bins is instead cut at the thresholds of a small decision tree
        fitted on each feature alone.
        """
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected features [n, {self.n_features}], got {x.shape}")
        lower = np.zeros((self.n_features, self.n_bins))
        width = np.ones_like(lower)
        used = np.zeros_like(lower)
        n_quantile = self.n_bins if labels is None else round(self.n_bins * (1 - tree_share))
        for j in range(self.n_features):
            edges = np.quantile(x[:, j], np.linspace(0.0, 1.0, n_quantile + 1))
            if labels is not None:
                edges = np.concatenate(
                    [edges, _tree_edges(x[:, j], labels, self.n_bins - n_quantile)]
                )
            # Edges are deduplicated as the float32 the buffers hold, so no width is zero.
            edges = np.unique(edges.astype(np.float32)).astype(np.float64)
            k = len(edges) - 1
            lower[j, :k], width[j, :k], used[j, :k] = edges[:-1], np.diff(edges), 1.0
        for name, value in (
            ("mean", x.mean(axis=0)),
            ("std", np.maximum(x.std(axis=0), MIN_STD)),
            ("lower", lower),
            ("width", width),
            ("used", used),
        ):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))
        return self

    def start_at_rate(self, rate: float) -> BinnedMLP:
        """Make an untrained model predict ``rate`` on average; returns ``self``.

        Early epochs then spend no steps pulling the scores from 0.5 down to the
        fraud rate.
        """
        with torch.no_grad():
            cast(nn.Linear, self.net[-1]).bias.fill_(float(np.log(rate / (1 - rate))))
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores before the undersampling offset, shape ``[batch, 1]``."""
        standard = (x - self.mean) / self.std
        encoded = ((x.unsqueeze(-1) - self.lower) / self.width).clamp(0.0, 1.0) * self.used
        return self.net(torch.cat([standard, encoded.flatten(1)], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fraud probability per row, shape ``[batch, 1]``."""
        return torch.sigmoid(self.logits(x) + self.offset)


def _tree_edges(values: np.ndarray, labels: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges of one feature: its range split at a decision tree's thresholds."""
    tree = DecisionTreeClassifier(max_leaf_nodes=n_bins, min_samples_leaf=20, random_state=0)
    tree.fit(values.reshape(-1, 1), labels)
    inner = tree.tree_.threshold[tree.tree_.feature >= 0]
    return np.unique(np.concatenate([[values.min(), values.max()], inner]))


class FraudEnsemble(nn.Module):
    """The mean of its members' probabilities; one graph for export."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fraud probability per row, shape ``[batch, 1]``."""
        return torch.stack([member(x) for member in self.members]).mean(dim=0)

