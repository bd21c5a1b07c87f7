"""Drift monitors: feature and score drift against a reference profile, concept drift from
matured labels, and the decisions they publish on ``model-events``.

Each model version carries a :class:`ReferenceProfile` (``reference.json`` beside the
model): per-feature quantile histograms, a seeded sample of each feature for the KS test,
and the histogram of the model's own scores on its training window. A
:class:`DriftMonitor` keeps the recent scored and labelled events in event time and, at
each :meth:`DriftMonitor.evaluate`, measures six monitors:

==================  =====================================================================
``feature_psi``     PSI of each feature over the last ``window_seconds`` of scored events
``feature_ks``      two-sample KS statistic and p-value of each feature against the sample
``score_psi``       PSI of the score distribution
``concept_ap``      relative drop of average precision on matured labels below the gate's
``concept_cp100``   relative drop of card precision@100 (daily mean) below the gate's
``page_hinkley``    Page-Hinkley alarm on the per-event log-loss of matured labels
==================  =====================================================================

Every statistic is oriented so that higher is worse, and a monitor *exceeds* when its
statistic is above its threshold. A decision is ``detected`` only after ``debounce``
consecutive exceeding evaluations and outside the ``cooldown_seconds`` that follow the
previous detection of the same monitor and feature. Page-Hinkley accumulates evidence
itself, so each of its alarms is detected at once (cooldown still applies).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Gauge
from scipy.stats import ks_2samp
from sklearn.metrics import average_precision_score

from models.evaluation import card_precision_at_k
from models.reference_features import TARGET_COLUMN
from models.simulator import SECONDS_PER_DAY

MonitorName = Literal[
    "feature_psi", "feature_ks", "score_psi", "concept_ap", "concept_cp100", "page_hinkley"
]
MONITORS: tuple[str, ...] = get_args(MonitorName)

PSI_EPSILON = 1e-4
"""Floor of a bin's proportion in PSI, so an empty bin adds a large but finite term.

A bin holding 1 % on one side and nothing on the other adds ``0.01 * ln(0.01 / 1e-4)``
= 0.046, about a quarter of the 0.2 alarm level; proportions are not renormalised."""

LOG_LOSS_CLIP = 1e-7


@dataclass(frozen=True, eq=False)
class Histogram:
    """Quantile bins ``(-inf, e1], (e1, e2], ..., (ek, +inf)`` and their proportions.

    Bins are closed on the right, so a value repeated at a quantile (a count of 0, a
    constant feature) falls into the bin that ends at it. ``inner_edges`` are unique.
    """

    inner_edges: np.ndarray
    proportions: np.ndarray

    @classmethod
    def from_values(cls, values: np.ndarray, bins: int = 10) -> Histogram:
        """Cut at the ``1/bins .. (bins-1)/bins`` quantiles of the non-NaN values."""
        values = _non_nan(values)
        finite = values[np.isfinite(values)]
        if not len(finite):
            raise ValueError("a reference histogram needs at least one finite value")
        inner = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        histogram = cls(inner.astype(np.float64), np.zeros(len(inner) + 1))
        return cls(histogram.inner_edges, histogram.share(values))

    @property
    def edges(self) -> np.ndarray:
        """All bin edges, ``-inf`` and ``+inf`` included."""
        return np.concatenate([[-np.inf], self.inner_edges, [np.inf]])

    def share(self, values: np.ndarray) -> np.ndarray:
        """Proportion of the non-NaN ``values`` in each bin (zeros when there are none)."""
        values = _non_nan(values)
        counts = np.bincount(
            np.searchsorted(self.inner_edges, values, side="left"),
            minlength=len(self.inner_edges) + 1,
        )
        return counts / max(len(values), 1)

    def psi(self, values: np.ndarray) -> float:
        """PSI of ``values`` against this histogram."""
        return psi(self.proportions, self.share(values))

    def as_dict(self) -> dict[str, list[float]]:
        return {"edges": self.inner_edges.tolist(), "proportions": self.proportions.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Histogram:
        return cls(np.asarray(data["edges"], np.float64), np.asarray(data["proportions"]))


def _non_nan(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[~np.isnan(values)]


def psi(expected: np.ndarray, actual: np.ndarray, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))`` over bin proportions.

    Both sides are floored at ``epsilon`` (see :data:`PSI_EPSILON`). Below 0.1 is usually
    read as stable, 0.1-0.25 as a moderate shift and above 0.25 as a major one.
    """
    e = np.maximum(np.asarray(expected, np.float64), epsilon)
    a = np.maximum(np.asarray(actual, np.float64), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_test(reference: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (``scipy.stats.ks_2samp``)."""
    result = ks_2samp(_non_nan(reference), _non_nan(values), method="auto")
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """What the features and scores looked like on a model's training window."""

    feature_names: tuple[str, ...]
    features: tuple[Histogram, ...]
    score: Histogram
    samples: tuple[np.ndarray, ...]
    n_rows: int
    bins: int

    @classmethod
    def from_frame(
        cls,
        features: np.ndarray,
        feature_names: Sequence[str],
        scores: np.ndarray,
        bins: int = 10,
        sample_size: int = 2000,
        seed: int = 0,
    ) -> ReferenceProfile:
        """Profile ``features [n, f]`` and ``scores [n]``.

        The KS sample is the same ``sample_size`` rows (drawn without replacement with
        ``seed``) for every feature, NaN dropped, stored as float32 as served.
        """
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != len(feature_names):
            raise ValueError(f"features {features.shape} do not match {len(feature_names)} names")
        if len(scores) != len(features) or not len(features):
            raise ValueError(f"need as many scores ({len(scores)}) as rows ({len(features)})")
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(features), min(sample_size, len(features)), replace=False))
        return cls(
            feature_names=tuple(feature_names),
            features=tuple(Histogram.from_values(column, bins) for column in features.T),
            score=Histogram.from_values(np.asarray(scores), bins),
            samples=tuple(_non_nan(c).astype(np.float32) for c in features[rows].T),
            n_rows=len(features),
            bins=bins,
        )

    def to_json(self) -> str:
        """``reference.json``: ``{"v": 1, "n_rows", "bins", "feature_names", "features":
        [{"edges", "proportions", "sample"}], "score": {"edges", "proportions"}}``.

        ``edges`` are the inner edges (the outer ones are always -inf and +inf, which JSON
        cannot spell); samples are written in float32's shortest form to stay small.
        """
        return json.dumps({
            "v": 1,
            "n_rows": self.n_rows,
            "bins": self.bins,
            "feature_names": list(self.feature_names),
            "features": [
                {**h.as_dict(), "sample": [float(str(v)) for v in s]}
                for h, s in zip(self.features, self.samples, strict=True)
            ],
            "score": self.score.as_dict(),
        })

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        data = json.loads(text)
        if data.get("v") != 1:
            raise ValueError(f"unsupported reference profile version {data.get('v')!r}")
        return cls(
            feature_names=tuple(data["feature_names"]),
            features=tuple(Histogram.from_dict(f) for f in data["features"]),
            score=Histogram.from_dict(data["score"]),
            samples=tuple(np.asarray(f["sample"], np.float32) for f in data["features"]),
            n_rows=int(data["n_rows"]),
            bins=int(data["bins"]),
        )


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
    details: dict[str, float] = field(default_factory=dict)
    model_version: int | None = None

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
        }


@dataclass
class _Debounce:
    streak: int = 0
    quiet_until: float = -math.inf


class DriftMonitor:
    """Keeps recent events of one model version in event time and evaluates the monitors.

    Event times are seconds on any origin whose multiples of 86,400 are day boundaries
    (simulator seconds or Unix time); ``now_event_time`` uses the same clock. Events
    leave memory when :meth:`evaluate` finds them outside every window, so call it
    regularly.
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        thresholds: DriftThresholds | None = None,
        baseline: QualityBaseline | None = None,
        model_version: int | None = None,
    ) -> None:
        self.profile = profile
        self.thresholds = thresholds or DriftThresholds()
        self.baseline = baseline
        self.model_version = model_version
        t = self.thresholds
        self.page_hinkley = PageHinkley(t.ph_delta, t.ph_lambda, t.ph_alpha)
        self._scored: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._labelled: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._ph_first, self._ph_last = math.inf, -math.inf
        self._ph_count, self._ph_alarms, self._ph_peak = 0, 0, 0.0
        self._states: dict[tuple[str, str], _Debounce] = {}
        self._concept_seen: tuple[int, int] | None = None

    def observe(self, features: np.ndarray, scores: np.ndarray, event_times: np.ndarray) -> None:
        """Add scored events: ``features [n, f]``, ``scores [n]``, ``event_times [n]``."""
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != len(self.profile.feature_names):
            raise ValueError(f"features {features.shape} do not match the reference profile")
        times = np.asarray(event_times, np.float64)
        self._scored.append((times, features, np.asarray(scores, np.float64).ravel()))

    def observe_labels(
        self, scores: np.ndarray, labels: np.ndarray, event_times: np.ndarray, cards: np.ndarray
    ) -> None:
        """Add matured events (score served, true label, card) and feed Page-Hinkley."""
        times = np.asarray(event_times, np.float64)
        scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel()
        self._labelled.append((times, scores, labels, np.asarray(cards)))
        order = np.argsort(times, kind="stable")
        for x in log_loss(scores[order], labels[order]):
            self._ph_alarms += self.page_hinkley.update(float(x))
            self._ph_peak = max(self._ph_peak, self.page_hinkley.peak)
        if len(times):
            self._ph_first = min(self._ph_first, float(times.min()))
            self._ph_last = max(self._ph_last, float(times.max()))
            self._ph_count += len(times)

    def evaluate(self, now_event_time: float) -> list[DriftDecision]:
        """Measure every monitor whose window is large enough and debounce the verdicts."""
        now = float(now_event_time)
        raw = [*self._covariate(now), *self._concept(now), *self._page_hinkley()]
        return [self._debounced(d, now) for d in raw]

    def _covariate(self, now: float) -> list[DriftDecision]:
        t, start = self.thresholds, now - self.thresholds.window_seconds
        self._scored = _expire(self._scored, start)
        if not self._scored:
            return []
        times, features, scores = (np.concatenate(c) for c in zip(*self._scored, strict=True))
        keep = (times > start) & (times <= now)
        features, scores, n = features[keep], scores[keep], int(keep.sum())
        if n < t.min_rows:
            return []
        window = {"window_start": start, "window_end": now, "n_rows": n}
        out = [self._decision("score_psi", "", self.profile.score.psi(scores), t.score_psi,
                              window)]
        for j, name in enumerate(self.profile.feature_names):
            if name in t.unmonitored_features:
                continue
            column = features[:, j]
            out.append(self._decision("feature_psi", name, self.profile.features[j].psi(column),
                                      t.psi, window))
            d, p = ks_test(self.profile.samples[j], column)
            out.append(self._decision("feature_ks", name, d, t.ks_statistic, window,
                                      {"p_value": p, "p_value_threshold": t.ks_pvalue},
                                      exceeded=d > t.ks_statistic and p < t.ks_pvalue))
        return out

    def _concept(self, now: float) -> list[DriftDecision]:
        t = self.thresholds
        times = [tm[tm <= now] for tm, *_ in self._labelled]
        latest = max((float(tm.max()) for tm in times if len(tm)), default=None)
        if latest is None:
            return []
        end_day = math.floor(latest / SECONDS_PER_DAY)
        start_day = end_day - t.concept_window_days
        self._labelled = _expire(self._labelled, start_day * SECONDS_PER_DAY)
        if self.baseline is None:
            return []
        times_all, scores, labels, cards = (np.concatenate(c) for c in zip(*self._labelled,
                                                                            strict=True))
        days = np.floor(times_all / SECONDS_PER_DAY).astype(np.int64)
        keep = (days >= start_day) & (days < end_day)
        n, positives = int(keep.sum()), int(np.count_nonzero(labels[keep]))
        if n < t.min_label_rows or positives < t.min_positives or self._concept_seen == (
            end_day, n
        ):
            return []
        # The window moves when labels mature, not with every evaluation; judging the
        # same rows twice would satisfy the debounce without new evidence.
        self._concept_seen = (end_day, n)
        live = window_quality(scores[keep], labels[keep], cards[keep], days[keep])
        window = {"window_start": start_day * SECONDS_PER_DAY,
                  "window_end": end_day * SECONDS_PER_DAY, "n_rows": n}
        out = []
        pairs: tuple[tuple[MonitorName, float, float, float], ...] = (
            ("concept_ap", live.average_precision, self.baseline.average_precision,
             t.ap_tolerance),
            ("concept_cp100", live.card_precision_at_100, self.baseline.card_precision_at_100,
             t.cp100_tolerance),
        )
        for monitor, value, base, tolerance in pairs:
            drop = 1.0 - value / base if base > 0 else 0.0
            out.append(self._decision(monitor, "", drop, tolerance, window,
                                      {"value": value, "baseline": base,
                                       "positives": positives}))
        return out

    def _page_hinkley(self) -> list[DriftDecision]:
        """The labelled events fed since the previous evaluation, and their alarms."""
        if not self._ph_count:
            return []
        window = {"window_start": self._ph_first, "window_end": self._ph_last,
                  "n_rows": self._ph_count}
        decision = self._decision("page_hinkley", "", self._ph_peak, self.thresholds.ph_lambda,
                                  window, {"alarms": self._ph_alarms},
                                  exceeded=self._ph_alarms > 0)
        self._ph_first, self._ph_last = math.inf, -math.inf
        self._ph_count, self._ph_alarms = 0, 0
        self._ph_peak = self.page_hinkley.statistic
        return [decision]

    def _decision(
        self,
        monitor: MonitorName,
        feature: str,
        statistic: float,
        threshold: float,
        window: Mapping[str, float],
        details: Mapping[str, float] | None = None,
        exceeded: bool | None = None,
    ) -> DriftDecision:
        return DriftDecision(
            monitor=monitor,
            feature=feature,
            statistic=float(statistic),
            threshold=float(threshold),
            window_start=float(window["window_start"]),
            window_end=float(window["window_end"]),
            n_rows=int(window["n_rows"]),
            detected=False,
            exceeded=bool(statistic > threshold if exceeded is None else exceeded),
            details=dict(details or {}),
            model_version=self.model_version,
        )

    def _debounced(self, decision: DriftDecision, now: float) -> DriftDecision:
        state = self._states.setdefault((decision.monitor, decision.feature), _Debounce())
        state.streak = state.streak + 1 if decision.exceeded else 0
        needed = 1 if decision.monitor == "page_hinkley" else self.thresholds.debounce
        if state.streak < needed or now < state.quiet_until:
            return decision
        state.streak, state.quiet_until = 0, now + self.thresholds.cooldown_seconds
        return dataclasses.replace(decision, detected=True)


def _expire(chunks: list[Any], start: float) -> list[Any]:
    """Drop chunks (tuples led by event times) whose every event is at or before ``start``."""
    return [c for c in chunks if len(c[0]) and c[0].max() > start]


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
