"""The fraud scorer: a small multilayer perceptron with standardisation inside the graph.

The mean and standard deviation of the training features are buffers of the module, so
they are saved with the weights and exported into the ONNX graph: serving feeds raw
features and can never apply a different normalisation than training did.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

# Features that are constant in the training window get this spread instead of zero.
MIN_STD = 1e-6


class FraudMLP(nn.Module):
    """Standardise, then ``hidden`` ReLU layers, then one sigmoid unit named ``score``.

    Parameters
    ----------
    n_features
        Width of one input row.
    hidden
        Widths of the hidden layers.
    dropout
        Dropout after each hidden layer while training.
    seed
        Seeds the weight initialisation without touching the global random state.

    Examples
    --------
    >>> model = FraudMLP(15, seed=0)
    >>> model(torch.zeros(4, 15)).shape
    torch.Size([4, 1])
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        n_features: int,
        hidden: Sequence[int] = (64, 32),
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = dropout
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))

        layers: list[nn.Module] = []
        width = n_features
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for size in self.hidden:
                layers += [nn.Linear(width, size), nn.ReLU()]
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
                width = size
            layers.append(nn.Linear(width, 1))
            self.net = nn.Sequential(*layers)

    def fit_scaler(self, features: np.ndarray | torch.Tensor) -> FraudMLP:
        """Set the standardisation buffers from training features; returns ``self``."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"expected features of shape [n, {self.n_features}], got {tuple(x.shape)}"
            )
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(x.std(dim=0, unbiased=False).clamp_min(MIN_STD))
        return self

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid scores, shape ``[batch, 1]``; training uses these for a stable loss."""
        return self.net((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fraud probability per row, shape ``[batch, 1]``."""
        return torch.sigmoid(self.logits(x))

    def architecture(self) -> dict[str, object]:
        """The constructor arguments that rebuild this shape (for warm starts and lineage)."""
        return {"n_features": self.n_features, "hidden": list(self.hidden), "dropout": self.dropout}
