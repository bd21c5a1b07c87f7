"""The retrainer's decisions as pure functions: when to retrain, which rows the gate
judges, whether a promoted model goes back, how close a shadow stayed, and how long a
drift alarm stays raised.

Nothing here talks to a service; :mod:`streams.lifecycle.retrainer` feeds these functions with
what it read from the feature log and the ``labels`` topic. Times are event time (Unix
seconds, day boundaries at multiples of 86,400).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models.drift_decisions import MONITORS, DriftDecision
from models.label_quality import QualityBaseline, window_quality
from models.model_version import Trigger
from models.simulator import SECONDS_PER_DAY


@dataclass(frozen=True)
class TriggerPolicy:
    """When a retraining starts.

    Attributes
    ----------
    schedule_days
        A scheduled retraining is due this many days of event time after the end of the
        champion's data (``None``: no schedule).
    cooldown_seconds
        Event time after a retraining started during which neither drift nor the
        schedule starts another one (a manual request still does). Without it a
        rejected challenger would be retrained at every detection of a drift that
        persists.
    follow_up_days, follow_up_span_days
        While a drift persists, retrain every ``follow_up_days`` of event time instead of
        every ``schedule_days``, until ``follow_up_span_days`` pass without a detection
        (``None``: no follow-ups). Labels arrive a week late, so the retraining a drift
        triggers has seen none of the changed world; each follow-up trains on the days
        of it that matured since (2 days, for two weeks: twice the label delay).
    """

    schedule_days: float | None = 7.0
    cooldown_seconds: float = SECONDS_PER_DAY
    follow_up_days: float | None = 2.0
    follow_up_span_days: float = 14.0


@dataclass
class TriggerState:
    """What the trigger logic remembers between steps."""

    busy: bool = False
    last_started: float | None = None
    schedule_anchor: float | None = None
    last_detected: float | None = None


@dataclass(frozen=True)
class TriggerDecision:
    """Why a retraining starts: its registry trigger, a reason, the evidence."""

    kind: Trigger
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def due_trigger(
    policy: TriggerPolicy,
    state: TriggerState,
    now: float,
    detections: Iterable[DriftDecision] = (),
    manual: str | None = None,
) -> TriggerDecision | None:
    """The retraining to start at ``now``, or ``None``.

    One retraining at a time: nothing starts while ``state.busy``. A manual request
    wins, then detected drift, then the schedule; drift and schedule wait out the
    cooldown after the previous start. Detections made while busy or cooling down are
    not queued, but they are remembered (``state.last_detected``): while a drift is
    recent the schedule runs every ``policy.follow_up_days``.
    """
    detected = [d for d in detections if d.detected]
    if detected:
        state.last_detected = now
    if state.busy:
        return None
    if manual is not None:
        return TriggerDecision("manual", manual)
    if state.last_started is not None and now < state.last_started + policy.cooldown_seconds:
        return None
    if detected:
        first = detected[0]
        name = f"{first.monitor}:{first.feature}" if first.feature else first.monitor
        return TriggerDecision("drift", f"{name} {first.statistic:.4g} > {first.threshold:.4g}",
                               {"monitors": sorted({d.monitor for d in detected}),
                                "decision": first.to_record()})
    if state.schedule_anchor is None:
        return None
    follow_up = (policy.follow_up_days is not None and state.last_detected is not None
                 and now < state.last_detected + policy.follow_up_span_days * SECONDS_PER_DAY)
    if follow_up:
        assert policy.follow_up_days is not None and state.last_detected is not None
        due = state.schedule_anchor + policy.follow_up_days * SECONDS_PER_DAY
        if now >= due:
            return TriggerDecision(
                "drift", f"follow-up: {policy.follow_up_days:g} days of event time since the "
                "champion's data ended, drift detected "
                f"{(now - state.last_detected) / SECONDS_PER_DAY:.1f} days ago",
                {"anchor": state.schedule_anchor, "due": due, "follow_up": True,
                 "last_detected": state.last_detected})
    if policy.schedule_days is not None:
        due = state.schedule_anchor + policy.schedule_days * SECONDS_PER_DAY
        if now >= due:
            return TriggerDecision("schedule", f"{policy.schedule_days:g} days of event time "
                                   "since the champion's data ended",
                                   {"anchor": state.schedule_anchor, "due": due})
    return None


@dataclass(frozen=True)
class GateSplit:
    """The gate window ``[start, end)``; training and early stopping end at ``start``."""

    start: float
    end: float


def gate_split(matured_event_times: np.ndarray, gate_days: int = 7) -> GateSplit:
    """The latest ``gate_days`` complete days of matured rows.

    The day of the latest matured row is still filling with labels, so the window ends
    at its midnight; the challenger trains (and stops early) on rows before ``start``,
    so neither it nor, when its data ended earlier, the champion has seen the window.
    """
    times = np.asarray(matured_event_times, np.float64)
    if not len(times):
        raise ValueError("no matured labelled rows to cut a gate window from")
    end = math.floor(float(times.max()) / SECONDS_PER_DAY) * SECONDS_PER_DAY
    start = end - gate_days * SECONDS_PER_DAY
    if not np.any((times >= start) & (times < end)):
        raise ValueError(f"no matured rows in the gate window [{start:.0f}, {end:.0f})")
    return GateSplit(float(start), float(end))


def fit_window(split: GateSplit, valid_days: int,
               validate_on_gate: bool) -> tuple[pd.Timestamp, int]:
    """Where a challenger's rows end, and its validation days (:func:`split_windows`'s
    ``end`` and ``valid_days``).

    By default the gate window is also the early-stopping window: the challenger trains
    on every matured day before it, and the gate judges it on rows it never fitted, but
    that chose its epoch (one number; a slight lean its way, which the gate's tolerances
    cover). Held apart (``validate_on_gate=False``), its validation is the
    ``valid_days`` before the gate window, and it learns a new pattern that many
    days later.
    """
    if validate_on_gate:
        return pd.Timestamp(split.end, unit="s"), round((split.end - split.start)
                                                        / SECONDS_PER_DAY)
    return pd.Timestamp(split.start, unit="s"), valid_days


@dataclass(frozen=True)
class RollbackVerdict:
    """The promoted model's live figures against its predecessor's on the same rows.

    ``roll_back`` is ``None`` while the rows cannot decide (too few, or no fraud).
    """

    roll_back: bool | None
    reasons: list[str]
    n_rows: int
    n_positives: int
    new: QualityBaseline | None = None
    old: QualityBaseline | None = None

    def to_record(self) -> dict[str, Any]:
        figures: dict[str, Any] = {"roll_back": self.roll_back, "reasons": list(self.reasons),
                                   "n_rows": self.n_rows, "n_positives": self.n_positives}
        for name, value in (("new", self.new), ("old", self.old)):
            if value is not None:
                figures[f"{name}_average_precision"] = value.average_precision
                figures[f"{name}_card_precision_at_100"] = value.card_precision_at_100
        return figures


def rollback_verdict(
    new_scores: np.ndarray,
    old_scores: np.ndarray,
    labels: np.ndarray,
    cards: np.ndarray,
    days: np.ndarray,
    *,
    ap_tolerance: float = 0.01,
    cp100_tolerance: float = 0.01,
    min_rows: int = 1000,
    min_positives: int = 20,
) -> RollbackVerdict:
    """Roll back when the new model's AP or CP@100 is below the old one's by more than
    the gate's tolerance, on matured rows the new model scored live."""
    labels = np.asarray(labels)
    n, positives = len(labels), int(np.count_nonzero(labels))
    if n < min_rows or positives < min_positives or positives == n:
        return RollbackVerdict(None, [f"{n} rows with {positives} frauds cannot decide yet"],
                               n, positives)
    new = window_quality(new_scores, labels, cards, days)
    old = window_quality(old_scores, labels, cards, days)
    reasons = [
        f"{label} {mine:.4f} is {theirs - mine:.4f} below the previous model's {theirs:.4f} "
        f"(tolerance {tolerance:g})"
        for label, mine, theirs, tolerance in (
            ("average precision", new.average_precision, old.average_precision, ap_tolerance),
            ("CP@100", new.card_precision_at_100, old.card_precision_at_100, cp100_tolerance),
        )
        if mine < theirs - tolerance
    ]
    return RollbackVerdict(bool(reasons), reasons, n, positives, new, old)


@dataclass(frozen=True)
class ShadowStats:
    """How closely a shadow's scores followed the serving model's on the same rows."""

    rows: int
    correlation: float | None
    mean_abs_diff: float | None
    max_abs_diff: float | None
    failed: int = 0

    def to_record(self) -> dict[str, Any]:
        return {"rows": self.rows, "correlation": self.correlation,
                "mean_abs_diff": self.mean_abs_diff, "max_abs_diff": self.max_abs_diff,
                "failed": self.failed}


def shadow_agreement(scores: np.ndarray, shadow_scores: np.ndarray) -> ShadowStats:
    """Pearson correlation and absolute differences over the rows both models scored.

    A shadow score that is not finite is a failed shadow call (the worker logs NaN and
    carries on); those rows are counted in ``failed``.
    """
    scores = np.asarray(scores, np.float64)
    shadow = np.asarray(shadow_scores, np.float64)
    both = np.isfinite(scores) & np.isfinite(shadow)
    failed = int(np.count_nonzero(~np.isfinite(shadow)))
    scores, shadow = scores[both], shadow[both]
    if not len(scores):
        return ShadowStats(0, None, None, None, failed)
    diff = np.abs(scores - shadow)
    correlation = None
    if len(scores) > 1 and scores.std() > 0 and shadow.std() > 0:
        correlation = float(np.corrcoef(scores, shadow)[0, 1])
    return ShadowStats(len(scores), correlation, float(diff.mean()), float(diff.max()), failed)


class DriftLatch:
    """Keeps ``factory_drift_detected`` of a monitor at 1 after a detection.

    :class:`models.drift_decisions.DriftMetrics` sets it for one evaluation only, which a 5-s
    scrape can miss. A detection holds until :meth:`clear` (the model that answers the
    drift is promoted) or until ``hold_seconds`` of event time pass.
    """

    def __init__(self, hold_seconds: float = SECONDS_PER_DAY) -> None:
        self.hold_seconds = hold_seconds
        self.until: dict[str, float] = {}

    def update(self, decisions: Iterable[DriftDecision], now: float) -> dict[str, int]:
        """Record the detections of one evaluation; returns 0 or 1 for every monitor."""
        for d in decisions:
            if d.detected:
                self.until[d.monitor] = max(self.until.get(d.monitor, -math.inf),
                                            now + self.hold_seconds)
        self.until = {m: t for m, t in self.until.items() if now < t}
        return {m: int(m in self.until) for m in MONITORS}

    def clear(self) -> dict[str, int]:
        self.until.clear()
        return dict.fromkeys(MONITORS, 0)

    @property
    def raised(self) -> Mapping[str, float]:
        return dict(self.until)
