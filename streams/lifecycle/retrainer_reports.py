"""What a retrainer's step read and did, and one challenger's fate.

:class:`StepReport` is what :meth:`streams.lifecycle.retrainer.Retrainer.step` returns;
:class:`RetrainOutcome` is a retraining's result (promoted, rejected or failed) with its
gate and swap reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.gate import GateReport
from streams.lifecycle.retrain_policy import RollbackVerdict, TriggerDecision
from streams.lifecycle.swap import SwapReport


@dataclass
class RetrainOutcome:
    """One challenger's fate: ``promoted``, ``rejected`` or ``failed``."""

    status: str
    version: int | None = None
    reasons: list[str] = field(default_factory=list)
    gate: GateReport | None = None
    swap: SwapReport | None = None
    train_seconds: float | None = None


@dataclass
class StepReport:
    """What one step read and did."""

    now: float | None = None
    rows: int = 0
    labels: int = 0
    feedback: int = 0
    matured: int = 0
    decisions: int = 0
    detected: list[str] = field(default_factory=list)
    trigger: TriggerDecision | None = None
    outcome: RetrainOutcome | None = None
    rollback: RollbackVerdict | None = None
