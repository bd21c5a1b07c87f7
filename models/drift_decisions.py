"""What the drift monitors decide: the monitors' names, their alarm levels
(:class:`DriftThresholds`), the verdict of one monitor at one evaluation
(:class:`DriftDecision`, the ``model-events`` record) and the Prometheus gauges of the
latest verdicts (:class:`DriftMetrics`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from prometheus_client import CollectorRegistry, Gauge

from models.simulator import SECONDS_PER_DAY

MonitorName = Literal[
    "feature_psi", "feature_ks", "feature_tail", "score_psi", "concept_ap", "concept_cp100",
    "page_hinkley",
]
MONITORS: tuple[str, ...] = get_args(MonitorName)


@dataclass(frozen=True)
class DriftThresholds:
    """Alarm levels of the monitors; every default is argued in its comment.

    Attributes
    ----------
    psi, score_psi
        0.2: the usual "significant shift" reading of PSI; with 10 bins and 1,000+ rows
        the noise of an unchanged distribution stays below 0.02.
    ks_pvalue, ks_statistic
        Both must hold: p < 0.001 (15 features tested each evaluation) and D > 0.1
        (a tenth of the mass moved). With a 2,000-value reference sample, p alone would
        flag shifts too small to matter once windows hold tens of thousands of rows.
    ap_tolerance, cp100_tolerance
        0.15: alarm when live AP or CP@100 falls more than 15 % below the gate baseline.
        The handbook's prequential folds vary by about 5 % (relative) week to week.
    ph_delta, ph_lambda, ph_alpha
        Per-event log-loss of a calibrated scorer at a ~1 % fraud rate has mean ~0.04 and
        standard deviation ~0.35. delta 0.02 and lambda 50 without fading gave no false
        alarm in 2 million stationary events and fired within ~1,200 events after 0.5 %
        of unseen frauds were added (mean log-loss doubled); river's defaults (0.005, 50,
        0.9999) raised an alarm every ~30,000 stationary events.
    tail_ratio, tail_pvalue
        Both must hold: five times the expected number of cards with a row beyond the
        reference's 0.1 % or 99.9 % quantile (the reference's share of rows, never
        less than 0.05 %, times the window's rows a card), and a binomial p < 1e-6 of
        that many if nothing changed: about 10 cards of a day's 800 with 2.4 rows
        each. A new fraud pattern (ten cards a day tested 10-30 times within hours)
        lands beyond the extremes long before it moves a decile, and long before its
        labels mature.
    min_rows, min_label_rows, min_positives
        Smallest windows judged: 1,000 scored rows; 1,000 labelled rows with 20 frauds
        (AP from fewer frauds swings by tens of percent).
    window_seconds, concept_window_days
        One day of scored events; the seven complete days before the day of the latest
        matured label.
    debounce, cooldown_seconds
        Two consecutive exceeding evaluations, then one quiet day of event time.
    unmonitored_features
        Features the covariate monitors leave out: a one-day window of the weekend flag
        is all 0 or all 1, always far from a week's mix (PSI above 2 on stationary
        traffic), so it would raise a drift every weekend and every Monday.
    """

    psi: float = 0.2
    score_psi: float = 0.2
    ks_pvalue: float = 1e-3
    ks_statistic: float = 0.1
    ap_tolerance: float = 0.15
    cp100_tolerance: float = 0.15
    ph_delta: float = 0.02
    ph_lambda: float = 50.0
    ph_alpha: float = 1.0
    tail_ratio: float = 5.0
    tail_pvalue: float = 1e-6
    min_rows: int = 1000
    min_label_rows: int = 1000
    min_positives: int = 20
    window_seconds: float = SECONDS_PER_DAY
    concept_window_days: int = 7
    debounce: int = 2
    cooldown_seconds: float = SECONDS_PER_DAY
    unmonitored_features: tuple[str, ...] = ("tx_during_weekend",)


@dataclass(frozen=True)
class DriftDecision:
    """One monitor's verdict at one evaluation (``statistic > threshold`` = exceeded)."""

    monitor: MonitorName
    feature: str
    statistic: float
    threshold: float
    window_start: float
    window_end: float
    n_rows: int
    detected: bool
    exceeded: bool
    details: dict[str, Any] = field(default_factory=dict)
    model_version: int | None = None
    evaluated_at: float | None = None

    def to_record(self) -> dict[str, Any]:
        """The ``model-events`` message: ``drift_detected`` or ``drift_check``."""
        return {
            "event": "drift_detected" if self.detected else "drift_check",
            "v": 1,
            "monitor": self.monitor,
            "feature": self.feature,
            "statistic": self.statistic,
            "threshold": self.threshold,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "n_rows": self.n_rows,
            "detected": self.detected,
            "exceeded": self.exceeded,
            "details": dict(self.details),
            "model_version": self.model_version,
            "evaluated_at": self.evaluated_at,
        }


class DriftMetrics:
    """Prometheus gauges of the latest evaluation, registered on ``registry`` (once).

    ``factory_drift_detected`` is 1 only at the evaluation that detected drift; alert
    rules should look back over a range (``max_over_time``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.statistic = Gauge(
            "factory_drift_statistic", "Latest drift statistic (higher is worse).",
            ["monitor", "feature"], registry=registry,
        )
        self.detected = Gauge(
            "factory_drift_detected", "1 when the latest evaluation detected drift.",
            ["monitor"], registry=registry,
        )

    def update(self, decisions: Iterable[DriftDecision]) -> None:
        """Set each statistic; ``detected`` is 1 for monitors with a detection, else 0."""
        detected = dict.fromkeys(MONITORS, 0)
        for d in decisions:
            self.statistic.labels(monitor=d.monitor, feature=d.feature).set(d.statistic)
            detected[d.monitor] |= d.detected
        for monitor, value in detected.items():
            self.detected.labels(monitor=monitor).set(value)
