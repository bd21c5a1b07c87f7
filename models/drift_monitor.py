"""The drift monitor of a model version: feature and score drift against its reference
profile (:mod:`models.reference_profile`), concept drift from matured labels
(:mod:`models.label_quality`), and the decisions it publishes on ``model-events``
(:mod:`models.drift_decisions`).

A :class:`DriftMonitor` keeps the recent scored and labelled events in event time and, at
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
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binom

from models.drift_decisions import DriftDecision, DriftThresholds, MonitorName
from models.label_quality import PageHinkley, QualityBaseline, log_loss, window_quality
from models.reference_profile import ENTITIES, ReferenceProfile, Tail, ks_test
from models.simulator import SECONDS_PER_DAY


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

