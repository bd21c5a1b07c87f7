"""What the retrainer reads, how it trains, judges and swaps: :class:`RetrainerConfig`.

One frozen value a retrainer is built with (:class:`streams.lifecycle.retrainer.Retrainer`,
``factory retrainer``, ``factory serve`` and the closed loop each fill one in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from models.drift_decisions import DriftThresholds
from models.gate import GateConfig
from models.recipe import DEFAULT_RECIPE, Recipe
from streams.lifecycle.retrain_policy import TriggerPolicy
from streams.lifecycle.swap import SwapConfig


@dataclass(frozen=True)
class RetrainerConfig:
    """What the retrainer reads, how it trains, judges and swaps."""

    feature_log: Path
    repo_dir: Path
    gate_days: int = 7
    valid_days: int = 7
    # The gate window also picks the early-stopping epoch, so a challenger learns from
    # days up to the gate's (streams.lifecycle.retrain_policy.fit_window); valid_days then unused.
    validate_on_gate: bool = True
    warm_start: bool = True
    recipe: Recipe = DEFAULT_RECIPE
    trigger: TriggerPolicy = field(default_factory=TriggerPolicy)
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    gate: GateConfig = field(default_factory=GateConfig)
    swap: SwapConfig = field(default_factory=SwapConfig)
    rollback_min_rows: int = 2000
    rollback_min_positives: int = 20
    retention_days: float = 90.0
    poll_s: float = 2.0
    seed: int = 0
    # Investigators' verdicts (the feedback topic) weigh this share of a training's loss
    # (models.trainer.train_version); they never enter the gate or the drift monitors.
    feedback_share: float = 0.5

    @property
    def log_features(self) -> list[str]:
        """The recipe's features as the feature log names them."""
        from models.extra_features import SERVING_NAMES

        return [SERVING_NAMES[c] for c in self.recipe.features]
