"""The reference profile of a model version: what its features and scores looked like on
its training window, and the statistics that compare live rows with it.

Each model version carries a :class:`ReferenceProfile` (``reference.json`` beside the
model): per-feature quantile histograms (:class:`Histogram`), the extremes of each
feature (:class:`Tail`), a seeded sample of each feature for the KS test
(:func:`ks_test`), and the histogram of the model's own scores on its training window.
:func:`psi` measures how far a live distribution has moved from a histogram.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import ks_2samp

PSI_EPSILON = 1e-4
"""Floor of a bin's proportion in PSI, so an empty bin adds a large but finite term.

A bin holding 1 % on one side and nothing on the other adds ``0.01 * ln(0.01 / 1e-4)``
= 0.046, about a quarter of the 0.2 alarm level; proportions are not renormalised."""

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

