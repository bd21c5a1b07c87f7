"""Drift monitors: feature and score drift against a reference profile, concept drift from
matured labels, and the decisions they publish on ``model-events``.

Each model version carries a :class:`ReferenceProfile` (``reference.json`` beside the
model): per-feature quantile histograms, a seeded sample of each feature for the KS test,
and the histogram of the model's own scores on its training window. A
:class:`DriftMonitor` keeps the recent scored and labelled events in event time and, at
each :meth:`DriftMonitor.evaluate`, measures seven monitors:

==================  =====================================================================
``feature_psi``     PSI of each feature over the last ``window_seconds`` of scored events
``feature_ks``      two-sample KS statistic and p-value of each feature against the sample
``feature_tail``    how many times the expected number of cards have a row beyond the extremes
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
from scipy.stats import binom, ks_2samp
from sklearn.metrics import average_precision_score

from models.evaluation import card_precision_at_k
from models.reference_features import TARGET_COLUMN
from models.simulator import SECONDS_PER_DAY

MonitorName = Literal[
    "feature_psi", "feature_ks", "feature_tail", "score_psi", "concept_ap", "concept_cp100",
    "page_hinkley",
]
MONITORS: tuple[str, ...] = get_args(MonitorName)

PSI_EPSILON = 1e-4
"""Floor of a bin's proportion in PSI, so an empty bin adds a large but finite term.

A bin holding 1 % on one side and nothing on the other adds ``0.01 * ln(0.01 / 1e-4)``
= 0.046, about a quarter of the 0.2 alarm level; proportions are not renormalised."""

LOG_LOSS_CLIP = 1e-7

ENTITIES = ("card", "terminal", "transaction")
"""Whose value a feature is: the tail monitor counts each card, terminal or row once."""


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


@dataclass(frozen=True)
class Tail:
    """The extremes of a feature on the reference rows: the ``q`` and ``1 - q`` quantiles
    and the share of rows strictly beyond each."""

    low_edge: float
    low_share: float
    high_edge: float
    high_share: float

    @classmethod
    def from_values(cls, values: np.ndarray, q: float) -> Tail:
        values = _non_nan(values)
        low, high = (float(v) for v in np.quantile(values, [q, 1.0 - q]))
        return cls(low, float(np.mean(values < low)), high, float(np.mean(values > high)))


@dataclass(frozen=True, eq=False)
class ReferenceProfile:
    """What the features and scores looked like on a model's training window.

    Only rows whose windows were complete count: a row less than ``warm_up_s[j]``
    after ``history_start`` (the first event the stream's state was built from) has a
    partly empty window for feature ``j``, and the monitors skip such live rows too. A
    feature with too few complete rows has no histogram (``None``) and is not
    monitored against this profile; the same holds for the score.
    """

    feature_names: tuple[str, ...]
    features: tuple[Histogram | None, ...]
    score: Histogram | None
    samples: tuple[np.ndarray, ...]
    n_rows: int
    bins: int
    history_start: float | None = None
    warm_up_s: tuple[float, ...] = ()
    score_warm_up_s: float = 0.0
    tails: tuple[Tail | None, ...] = ()
    tail_quantile: float = 0.001
    entities: tuple[str, ...] = ()

    @classmethod
    def from_frame(
        cls,
        features: np.ndarray,
        feature_names: Sequence[str],
        scores: np.ndarray,
        bins: int = 10,
        sample_size: int = 2000,
        seed: int = 0,
        *,
        event_times: np.ndarray | None = None,
        history_start: float | None = None,
        warm_up_s: Sequence[float] | None = None,
        score_warm_up_s: float = 0.0,
        min_complete_rows: int = 1000,
        tail_quantile: float = 0.001,
        entities: Sequence[str] | None = None,
        score_rows: np.ndarray | None = None,
    ) -> ReferenceProfile:
        """Profile ``features [n, f]`` and ``scores [n]``.

        With ``event_times``, ``history_start`` and ``warm_up_s``, feature ``j`` is
        profiled on the rows at or after ``history_start + warm_up_s[j]`` only, and
        left unprofiled when fewer than ``min_complete_rows`` remain; the score
        likewise with ``score_warm_up_s``, and only on ``score_rows`` when given (a
        model's scores on its own training rows are surer than on any later row, so
        the score's reference is its held-out rows). ``entities`` names whose value
        each feature is (``card``, ``terminal`` or ``transaction``; the tail monitor
        counts each once). The KS sample of a feature is up to
        ``sample_size`` of its rows (drawn without replacement with ``seed``), NaN
        dropped, stored as float32 as served.
        """
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != len(feature_names):
            raise ValueError(f"features {features.shape} do not match {len(feature_names)} names")
        if len(scores) != len(features) or not len(features):
            raise ValueError(f"need as many scores ({len(scores)}) as rows ({len(features)})")
        warm = tuple(float(w) for w in (warm_up_s or [0.0] * len(feature_names)))
        if len(warm) != len(feature_names):
            raise ValueError(f"{len(warm)} warm-up lengths for {len(feature_names)} features")
        masked = event_times is not None and history_start is not None
        times = np.asarray(event_times, np.float64) if masked else None

        def complete(warm_up: float) -> np.ndarray | None:
            """The rows whose window is complete, or None when too few are."""
            if times is None:
                return np.arange(len(features))
            assert history_start is not None
            rows = np.flatnonzero(times >= history_start + warm_up)
            return rows if len(rows) >= min_complete_rows else None

        histograms: list[Histogram | None] = []
        samples: list[np.ndarray] = []
        tails: list[Tail | None] = []
        for j, column in enumerate(np.asarray(features).T):
            rows = complete(warm[j])
            values = None if rows is None else _non_nan(column[rows])
            if values is None or not np.isfinite(values).any():
                histograms.append(None)
                tails.append(None)
                samples.append(np.zeros(0, np.float32))
                continue
            histograms.append(Histogram.from_values(values, bins))
            tails.append(Tail.from_values(values, tail_quantile))
            rng = np.random.default_rng(seed)
            pick = np.sort(rng.choice(len(values), min(sample_size, len(values)), replace=False))
            samples.append(values[pick].astype(np.float32))
        score_at = complete(score_warm_up_s)
        if score_at is not None and score_rows is not None:
            score_at = np.intersect1d(score_at, np.flatnonzero(score_rows))
            score_at = score_at if len(score_at) >= min(min_complete_rows, len(features)) \
                else None
        kinds = tuple(entities or ("card",) * len(feature_names))
        if len(kinds) != len(feature_names) or set(kinds) - set(ENTITIES):
            raise ValueError(f"entities {kinds} are not one of {ENTITIES} a feature")
        return cls(
            feature_names=tuple(feature_names),
            features=tuple(histograms),
            score=None if score_at is None else Histogram.from_values(
                np.asarray(scores)[score_at], bins),
            samples=tuple(samples),
            n_rows=len(features),
            bins=bins,
            history_start=None if history_start is None else float(history_start),
            warm_up_s=warm,
            score_warm_up_s=float(score_warm_up_s),
            tails=tuple(tails),
            tail_quantile=tail_quantile,
            entities=kinds,
        )

    def complete_from(self, j: int | None) -> float:
        """Event time from which live rows have a complete window for feature ``j``
        (``None``: the score); ``-inf`` when the profile does not know its history."""
        if self.history_start is None:
            return -math.inf
        warm = self.score_warm_up_s if j is None else (self.warm_up_s or (0.0,) * (j + 1))[j]
        return self.history_start + warm

    @property
    def unprofiled(self) -> list[str]:
        """Features (and ``score``) this profile cannot judge: too few complete rows."""
        names = [n for n, h in zip(self.feature_names, self.features, strict=True) if h is None]
        return names + (["score"] if self.score is None else [])

    def to_json(self) -> str:
        """``reference.json``: ``{"v": 2, "n_rows", "bins", "feature_names",
        "history_start", "score_warm_up_s", "tail_quantile", "entities", "features": [{"edges",
        "proportions", "sample", "warm_up_s", "tail"} or {"warm_up_s"} when unprofiled],
        "score": {"edges", "proportions"} or null}``.

        ``edges`` are the inner edges (the outer ones are always -inf and +inf, which JSON
        cannot spell); samples are written in float32's shortest form to stay small.
        """
        warm = self.warm_up_s or (0.0,) * len(self.feature_names)
        tails = self.tails or (None,) * len(self.feature_names)
        features = []
        for h, sample, w, tail in zip(self.features, self.samples, warm, tails, strict=True):
            item: dict[str, Any] = {"warm_up_s": w}
            if h is not None:
                item.update(h.as_dict(), sample=[float(str(v)) for v in sample],
                            tail=None if tail is None else dataclasses.asdict(tail))
            features.append(item)
        return json.dumps({
            "v": 2,
            "n_rows": self.n_rows,
            "bins": self.bins,
            "feature_names": list(self.feature_names),
            "history_start": self.history_start,
            "score_warm_up_s": self.score_warm_up_s,
            "tail_quantile": self.tail_quantile,
            "entities": list(self.entities),
            "features": features,
            "score": None if self.score is None else self.score.as_dict(),
        })

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        data = json.loads(text)
        if data.get("v") not in (1, 2):
            raise ValueError(f"unsupported reference profile version {data.get('v')!r}")
        items = data["features"]
        return cls(
            feature_names=tuple(data["feature_names"]),
            features=tuple(Histogram.from_dict(f) if "edges" in f else None for f in items),
            score=None if data["score"] is None else Histogram.from_dict(data["score"]),
            samples=tuple(np.asarray(f.get("sample", []), np.float32) for f in items),
            n_rows=int(data["n_rows"]),
            bins=int(data["bins"]),
            history_start=data.get("history_start"),
            warm_up_s=tuple(float(f.get("warm_up_s", 0.0)) for f in items),
            score_warm_up_s=float(data.get("score_warm_up_s", 0.0)),
            tails=tuple(Tail(**f["tail"]) if f.get("tail") else None for f in items),
            tail_quantile=float(data.get("tail_quantile", 0.001)),
            entities=tuple(data.get("entities", ())),
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
        self._scored: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # keys
        self._rows_seen = 0
        self._labelled: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._ph_first, self._ph_last = math.inf, -math.inf
        self._ph_count, self._ph_alarms, self._ph_peak = 0, 0, 0.0
        self._states: dict[tuple[str, str], _Debounce] = {}
        self._concept_seen: tuple[int, int] | None = None

    def observe(self, features: np.ndarray, scores: np.ndarray, event_times: np.ndarray,
                cards: np.ndarray | None = None, terminals: np.ndarray | None = None) -> None:
        """Add scored events: ``features [n, f]``, ``scores [n]``, ``event_times [n]``,
        and their ``cards [n]`` and ``terminals [n]`` (the tail monitor counts a card or
        a terminal once; without them, every row is one of its own)."""
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != len(self.profile.feature_names):
            raise ValueError(f"features {features.shape} do not match the reference profile")
        times = np.asarray(event_times, np.float64)
        rows = -1 - (self._rows_seen + np.arange(len(times), dtype=np.int64))
        self._rows_seen += len(times)
        keys = np.column_stack([rows if k is None else np.asarray(k, np.int64)
                                for k in (cards, terminals, rows)])
        self._scored.append((times, features, np.asarray(scores, np.float64).ravel(), keys))

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
        return [self._debounced(dataclasses.replace(d, evaluated_at=now), now) for d in raw]

    def _covariate(self, now: float) -> list[DriftDecision]:
        t, start = self.thresholds, now - self.thresholds.window_seconds
        self._scored = _expire(self._scored, start)
        if not self._scored:
            return []
        times, features, scores, keys = (np.concatenate(c)
                                         for c in zip(*self._scored, strict=True))
        entities = self.profile.entities or ("card",) * features.shape[1]
        in_window = (times > start) & (times <= now)
        profile, out = self.profile, []

        def rows(j: int | None) -> np.ndarray:
            """The window's rows whose window is complete for feature ``j`` (or the score)."""
            return in_window & (times >= profile.complete_from(j))

        keep = rows(None)
        if profile.score is not None and keep.sum() >= t.min_rows:
            out.append(self._decision("score_psi", "", profile.score.psi(scores[keep]),
                                      t.score_psi, self._window(start, now, keep)))
        tails = profile.tails or (None,) * len(profile.feature_names)
        for j, name in enumerate(profile.feature_names):
            histogram = profile.features[j]
            keep = rows(j)
            if name in t.unmonitored_features or histogram is None or keep.sum() < t.min_rows:
                continue
            window, column = self._window(start, now, keep), features[keep, j]
            out.append(self._decision("feature_psi", name, histogram.psi(column), t.psi, window))
            d, p = ks_test(profile.samples[j], column)
            out.append(self._decision("feature_ks", name, d, t.ks_statistic, window,
                                      {"p_value": p, "p_value_threshold": t.ks_pvalue},
                                      exceeded=d > t.ks_statistic and p < t.ks_pvalue))
            tail = tails[j]
            if tail is not None:
                key = keys[keep, ENTITIES.index(entities[j])]
                out.append(self._tail(name, tail, column, key, window))
        return out

    @staticmethod
    def _window(start: float, now: float, keep: np.ndarray) -> dict[str, float]:
        return {"window_start": start, "window_end": now, "n_rows": int(keep.sum())}

    def _tail(self, name: str, tail: Tail, column: np.ndarray, keys: np.ndarray,
              window: Mapping[str, float]) -> DriftDecision:
        """How many times more cards (terminals, rows: whose value the feature is) than
        expected have a row beyond the reference's extremes (the worse side), and how
        unlikely that many are if nothing changed.

        Each card or terminal counts once: a busy one's rows are not independent draws,
        and one terminal paid at 11 times a day would otherwise look like 11 surprises.
        A card with more rows has more chances, though: the expected share of cards is
        the reference's share of rows beyond the edge (never below half the tail
        quantile) times the window's rows a card.
        """
        t = self.thresholds
        known = ~np.isnan(column)
        column, keys = column[known], keys[known]
        n_keys = len(np.unique(keys))
        per_key = len(keys) / max(n_keys, 1)
        floor = self.profile.tail_quantile / 2
        sides = []
        for side, beyond, share in (("high", column > tail.high_edge, tail.high_share),
                                    ("low", column < tail.low_edge, tail.low_share)):
            count = len(np.unique(keys[beyond]))
            expected = min(1.0, max(share, floor) * per_key)
            ratio = count / max(n_keys, 1) / expected
            p_value = float(binom.sf(count - 1, n_keys, expected)) if count else 1.0
            sides.append((ratio, side, count, expected, p_value))
        ratio, side, count, expected, p_value = max(sides)
        return self._decision("feature_tail", name, ratio, t.tail_ratio, window,
                              {"side": side, "beyond": count, "in_window": n_keys,
                               "expected_share": expected, "p_value": p_value,
                               "p_value_threshold": t.tail_pvalue},
                              exceeded=ratio > t.tail_ratio and p_value < t.tail_pvalue)

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
        details: Mapping[str, Any] | None = None,
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
