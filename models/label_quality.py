"""Model quality on matured labels: the figures of a window and the per-event loss.

:func:`window_quality` gives the average precision and daily-mean CP@100 of a window of
labelled events (:class:`QualityBaseline`); the promotion gate and the concept monitors
both use it. :func:`log_loss` is the per-event loss that :class:`PageHinkley` watches
for an increase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from models.evaluation import card_precision_at_k
from models.reference_features import TARGET_COLUMN

LOG_LOSS_CLIP = 1e-7


@dataclass(frozen=True)
class QualityBaseline:
    """Average precision and daily-mean CP@100 of a model on its gate window."""

    average_precision: float
    card_precision_at_100: float


def window_quality(
    scores: np.ndarray, labels: np.ndarray, cards: np.ndarray, days: np.ndarray, k: int = 100
) -> QualityBaseline:
    """AP (pooled) and CP@k (:func:`models.evaluation.card_precision_at_k`, daily mean).

    The gate and the concept monitors both call this, so live figures and the gate's
    baseline follow one definition.
    """
    frame = pd.DataFrame({"CUSTOMER_ID": cards, TARGET_COLUMN: labels, "TX_TIME_DAYS": days})
    return QualityBaseline(
        average_precision=float(average_precision_score(labels, scores)),
        card_precision_at_100=card_precision_at_k(frame, scores, k).mean,
    )


def log_loss(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-event binary log-loss, scores clipped to ``[1e-7, 1 - 1e-7]``."""
    p = np.clip(np.asarray(scores, np.float64), LOG_LOSS_CLIP, 1.0 - LOG_LOSS_CLIP)
    y = np.asarray(labels, np.float64)
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


class PageHinkley:
    """Page-Hinkley test for an increase of the mean of a stream.

    ``m_t = alpha * m_{t-1} + (x_t - mean_t - delta)``; an alarm is raised when
    ``m_t - min(m) > threshold`` after ``min_instances`` values, and the detector then
    starts afresh. ``delta`` is the increase tolerated, ``threshold`` (lambda) the
    evidence needed, ``alpha`` < 1 fades old deviations.
    """

    def __init__(
        self, delta: float, threshold: float, alpha: float = 1.0, min_instances: int = 30
    ) -> None:
        self.delta, self.threshold = delta, threshold
        self.alpha, self.min_instances = alpha, min_instances
        self.peak = 0.0  # the statistic after the last update, before any reset
        self.reset()

    def reset(self) -> None:
        """Forget the stream."""
        self.n, self.mean, self.sum, self.minimum = 0, 0.0, 0.0, 0.0

    @property
    def statistic(self) -> float:
        return self.sum - self.minimum

    def update(self, x: float) -> bool:
        """Add one value; ``True`` when it raises an alarm (the detector is then reset)."""
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self.sum = self.alpha * self.sum + (x - self.mean - self.delta)
        self.minimum = min(self.minimum, self.sum)
        self.peak = self.statistic
        if self.n >= self.min_instances and self.peak > self.threshold:
            self.reset()
            return True
        return False

