"""Drift monitors: PSI, KS, Page-Hinkley, concept figures, debounce, records and metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from scipy.stats import ks_2samp

from models.drift_decisions import DriftDecision, DriftMetrics, DriftThresholds
from models.drift_monitor import DriftMonitor
from models.evaluation import card_precision_at_k
from models.label_quality import PageHinkley, log_loss, window_quality
from models.reference_profile import PSI_EPSILON, Histogram, ReferenceProfile, ks_test, psi

HOUR = 3600.0
DAY = 86400.0
NAMES = ("amount", "count", "risk")


def _features(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([
        rng.lognormal(3.0, 1.0, n) * math.exp(shift),  # amounts move with the shift
        rng.poisson(2.0, n).astype(float),  # a count: many ties
        rng.beta(1.0, 20.0, n),
    ]).astype(np.float32)


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    features = _features(20_000, seed=0)
    scores = np.random.default_rng(1).beta(0.2, 20.0, len(features))
    return ReferenceProfile.from_frame(features, NAMES, scores, bins=10)


def test_psi_matches_hand_computed_values() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 3
    assert psi(np.array([0.5, 0.5]), np.array([0.25, 0.75])) == pytest.approx(0.274653072, 1e-8)
    # an empty bin is floored at epsilon: 0.5 ln 2 + (0.5 - 1e-4) ln(0.5 / 1e-4)
    expected = 0.5 * math.log(2) + (0.5 - PSI_EPSILON) * math.log(0.5 / PSI_EPSILON)
    assert psi(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == pytest.approx(expected)
    assert expected == pytest.approx(4.6043, abs=1e-4)

    histogram = Histogram.from_values(np.arange(1.0, 11.0), bins=2)
    assert histogram.inner_edges.tolist() == [5.5]
    assert histogram.proportions.tolist() == [0.5, 0.5]
    shifted = np.array([1, 2, 7, 8, 9, 10, 11, 12], dtype=float)
    assert histogram.psi(shifted) == pytest.approx(0.25 * math.log(3), 1e-12)


def test_psi_near_zero_on_same_distribution_and_large_on_a_shift(
    profile: ReferenceProfile,
) -> None:
    same, shifted = _features(20_000, seed=7), _features(20_000, seed=7, shift=1.0)
    for j in range(len(NAMES)):
        assert profile.features[j].psi(same[:, j]) < 0.01
    assert profile.features[0].psi(shifted[:, 0]) > 0.5
    assert profile.features[1].psi(shifted[:, 1]) < 0.01


def test_histogram_handles_constants_ties_infinities_and_nan() -> None:
    constant = Histogram.from_values(np.full(100, 3.0))
    assert constant.inner_edges.tolist() == [3.0]
    assert constant.proportions.tolist() == [1.0, 0.0]
    assert constant.psi(np.full(50, 3.0)) == 0.0
    assert constant.psi(np.full(50, 4.0)) > 4.0

    zeros = np.r_[np.zeros(900), np.linspace(1, 2, 100)]
    tied = Histogram.from_values(zeros, bins=10)
    assert len(np.unique(tied.inner_edges)) == len(tied.inner_edges) < 9
    assert tied.proportions[0] == pytest.approx(0.9)
    assert tied.edges[0] == -np.inf and tied.edges[-1] == np.inf

    share = tied.share(np.array([-np.inf, np.inf, np.nan, 0.0]))
    assert share[0] == pytest.approx(2 / 3) and share[-1] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="finite"):
        Histogram.from_values(np.array([np.nan, np.inf]))


def test_profile_round_trips_through_json(profile: ReferenceProfile) -> None:
    text = profile.to_json()
    again = ReferenceProfile.from_json(text)
    assert again.feature_names == NAMES and again.n_rows == 20_000 and again.bins == 10
    for a, b in zip(profile.features + (profile.score,), again.features + (again.score,),
                    strict=True):
        np.testing.assert_array_equal(a.inner_edges, b.inner_edges)
        np.testing.assert_array_equal(a.proportions, b.proportions)
    for mine, theirs in zip(profile.samples, again.samples, strict=True):
        assert len(mine) == 2000 and theirs.dtype == np.float32
        np.testing.assert_array_equal(mine, theirs)
    assert json.loads(text)["v"] == 2 and len(text) < 200_000


def test_profile_sample_is_seeded() -> None:
    features, scores = _features(5000, seed=3), np.zeros(5000)
    first = ReferenceProfile.from_frame(features, NAMES, scores, seed=1)
    second = ReferenceProfile.from_frame(features, NAMES, scores, seed=1)
    other = ReferenceProfile.from_frame(features, NAMES, scores, seed=2)
    np.testing.assert_array_equal(first.samples[0], second.samples[0])
    assert not np.array_equal(first.samples[0], other.samples[0])


def test_ks_matches_known_values_and_scipy() -> None:
    # The ECDFs of these samples are 0.5 apart at x = 2.
    assert ks_test(np.array([1.0, 2, 3, 4]), np.array([3.0, 4, 5, 6]))[0] == 0.5
    # Disjoint samples of 3: D = 1 and the exact p-value is 2 / C(6, 3) = 0.1.
    d, p = ks_test(np.array([1.0, 2, 3]), np.array([4.0, 5, 6]))
    assert (d, p) == (1.0, pytest.approx(0.1))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(0.1, 1.0, size=5000)
    expected = ks_2samp(a, b)
    assert ks_test(a, b) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))


def test_page_hinkley_fires_after_a_mean_shift_and_not_before() -> None:
    rng = np.random.default_rng(0)
    detector = PageHinkley(delta=0.05, threshold=5.0)
    before = rng.normal(0.0, 0.1, 3000)
    assert not any(detector.update(float(x)) for x in before)
    after = rng.normal(0.5, 0.1, 200)
    alarms = [i for i, x in enumerate(after) if detector.update(float(x))]
    assert alarms and alarms[0] < 30


def test_page_hinkley_defaults_on_log_loss() -> None:
    """Calibrated scores at a ~1 % fraud rate; then 0.5 % frauds the model scores low."""
    rng = np.random.default_rng(0)
    t = DriftThresholds()
    detector = PageHinkley(t.ph_delta, t.ph_lambda, t.ph_alpha)
    p = rng.beta(0.2, 20.0, 150_000)
    y = rng.random(len(p)) < p
    losses = log_loss(p, y)
    assert losses.mean() == pytest.approx(0.043, abs=0.005)
    assert not any(detector.update(float(x)) for x in losses[:100_000])
    unseen = rng.random(50_000) < 0.005
    shifted = np.where(unseen, -np.log(np.clip(p[100_000:], 1e-7, 1)), losses[100_000:])
    alarms = [i for i, x in enumerate(shifted) if detector.update(float(x))]
    assert alarms and alarms[0] < 5000


def _monitor(profile: ReferenceProfile, **overrides: float) -> DriftMonitor:
    settings: dict[str, float] = {"window_seconds": HOUR, "min_rows": 500, "debounce": 2,
                                  "cooldown_seconds": 5 * HOUR}
    settings.update(overrides)
    return DriftMonitor(profile, DriftThresholds(**settings), model_version=3)  # type: ignore[arg-type]


def _feed_hour(monitor: DriftMonitor, hour: int, shift: float, seed: int) -> None:
    features = _features(2000, seed=seed, shift=shift)
    scores = np.random.default_rng(seed).beta(0.2, 20.0, len(features))
    times = hour * HOUR + np.linspace(1.0, HOUR - 1.0, len(features))
    monitor.observe(features, scores, times)


def _by_key(decisions: list[DriftDecision], monitor: str, feature: str = "") -> DriftDecision:
    (found,) = [d for d in decisions if d.monitor == monitor and d.feature == feature]
    return found


def test_feature_drift_flags_only_the_shifted_feature(profile: ReferenceProfile) -> None:
    monitor = _monitor(profile, debounce=1)
    _feed_hour(monitor, 0, shift=1.0, seed=10)
    decisions = monitor.evaluate(HOUR)
    assert {d.monitor for d in decisions} == {"feature_psi", "feature_ks", "feature_tail",
                                              "score_psi"}
    psi_amount = _by_key(decisions, "feature_psi", "amount")
    ks_amount = _by_key(decisions, "feature_ks", "amount")
    assert psi_amount.detected and psi_amount.statistic > 0.5
    assert ks_amount.detected and ks_amount.details["p_value"] < 1e-10
    tail_amount = _by_key(decisions, "feature_tail", "amount")
    assert tail_amount.detected and tail_amount.details["side"] == "high"
    for name in ("count", "risk"):
        assert not _by_key(decisions, "feature_psi", name).exceeded
        assert not _by_key(decisions, "feature_ks", name).exceeded
        assert not _by_key(decisions, "feature_tail", name).exceeded
    assert not _by_key(decisions, "score_psi").exceeded
    assert psi_amount.n_rows == 2000 and psi_amount.window_end == HOUR


def test_unmonitored_features_get_no_decision(profile: ReferenceProfile) -> None:
    """The shifted feature is left out when listed (the weekend flag is by default)."""
    monitor = _monitor(profile, debounce=1, unmonitored_features=("amount",))
    _feed_hour(monitor, 0, shift=1.0, seed=10)
    decisions = monitor.evaluate(HOUR)
    assert {d.feature for d in decisions} == {"", "count", "risk"}
    assert not any(d.detected for d in decisions)
    assert DriftThresholds().unmonitored_features == ("tx_during_weekend",)


def test_small_windows_and_old_events_are_not_judged(profile: ReferenceProfile) -> None:
    monitor = _monitor(profile, min_rows=5000)
    _feed_hour(monitor, 0, shift=1.0, seed=11)
    assert monitor.evaluate(HOUR) == []
    monitor = _monitor(profile)
    _feed_hour(monitor, 0, shift=1.0, seed=11)
    assert monitor.evaluate(3 * HOUR) == []  # the hour of events left the window


def test_debounce_and_cooldown(profile: ReferenceProfile) -> None:
    monitor = _monitor(profile)
    verdicts = []
    # shifted, normal, shifted, shifted, shifted (cooldown), ..., after the cooldown
    shifts = [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    for hour, shift in enumerate(shifts):
        _feed_hour(monitor, hour, shift, seed=100 + hour)
        d = _by_key(monitor.evaluate((hour + 1) * HOUR), "feature_psi", "amount")
        verdicts.append((d.exceeded, d.detected))
    assert [e for e, _ in verdicts] == [s > 0 for s in shifts]
    # detected at the 2nd consecutive exceedance (t = 4 h), quiet before 4 h + 5 h, then
    # detected at once at t = 9 h since the streak kept counting during the cooldown, and
    # the streak starts afresh after a detection
    assert [d for _, d in verdicts] == [False] * 3 + [True] + [False] * 4 + [True, False]


def _labelled_days(n_days: int, seed: int, quality: float) -> dict[str, np.ndarray]:
    """2,000 events a day on 400 cards; ``quality`` 0 gives scores unrelated to labels."""
    rng = np.random.default_rng(seed)
    n = 2000 * n_days
    labels = (rng.random(n) < 0.02).astype(np.int64)
    signal = rng.normal(size=n) + 3.0 * labels * quality
    scores = 1.0 / (1.0 + np.exp(-(signal - 5.0)))
    times = np.sort(rng.uniform(0, n_days * DAY, n))
    return {"scores": scores, "labels": labels, "event_times": times,
            "cards": rng.integers(0, 400, n)}


def test_window_quality_reuses_card_precision() -> None:
    data = _labelled_days(3, seed=0, quality=1.0)
    days = (data["event_times"] // DAY).astype(np.int64)
    got = window_quality(data["scores"], data["labels"], data["cards"], days)
    frame = pd.DataFrame({"CUSTOMER_ID": data["cards"], "TX_FRAUD": data["labels"],
                          "TX_TIME_DAYS": days})
    assert got.card_precision_at_100 == card_precision_at_k(frame, data["scores"]).mean
    assert 0.5 < got.average_precision <= 1.0


def test_concept_drift_against_the_gate_baseline(profile: ReferenceProfile) -> None:
    good = _labelled_days(9, seed=1, quality=1.0)
    days = (good["event_times"] // DAY).astype(np.int64)
    baseline = window_quality(good["scores"], good["labels"], good["cards"], days)
    thresholds = DriftThresholds(debounce=1, concept_window_days=7)

    healthy = DriftMonitor(profile, thresholds, baseline)
    healthy.observe_labels(**good)
    decisions = healthy.evaluate(20 * DAY)
    ap = _by_key(decisions, "concept_ap")
    assert not ap.exceeded and ap.window_start == DAY and ap.window_end == 8 * DAY
    assert ap.n_rows == int(((days >= 1) & (days < 8)).sum())
    # the same matured window is not judged twice
    assert not [d for d in healthy.evaluate(21 * DAY) if d.monitor.startswith("concept")]

    worse = DriftMonitor(profile, thresholds, baseline)
    worse.observe_labels(**_labelled_days(9, seed=2, quality=0.3))
    decisions = worse.evaluate(20 * DAY)
    for monitor in ("concept_ap", "concept_cp100"):
        d = _by_key(decisions, monitor)
        assert d.detected and d.statistic > 0.15
        assert d.details["value"] < d.details["baseline"]

    no_baseline = DriftMonitor(profile, thresholds)
    no_baseline.observe_labels(**good)
    assert [d.monitor for d in no_baseline.evaluate(20 * DAY)] == ["page_hinkley"]


def test_page_hinkley_in_the_monitor_is_not_debounced(profile: ReferenceProfile) -> None:
    monitor = DriftMonitor(profile, DriftThresholds(debounce=3))
    rng = np.random.default_rng(5)
    n = 20_000
    labels = (rng.random(n) < 0.01).astype(np.int64)
    calibrated = np.where(labels == 1, 0.3, 0.005)
    monitor.observe_labels(calibrated, labels, np.arange(n, dtype=float), np.zeros(n))
    (quiet,) = monitor.evaluate(float(n))
    assert quiet.monitor == "page_hinkley" and not quiet.exceeded and quiet.n_rows == n
    flipped = np.where(labels == 1, 0.0001, 0.005)  # frauds now scored lowest
    monitor.observe_labels(flipped, labels, n + np.arange(n, dtype=float), np.zeros(n))
    (alarm,) = monitor.evaluate(2.0 * n)
    assert alarm.detected and alarm.details["alarms"] >= 1 and alarm.statistic > 50
    assert (alarm.window_start, alarm.window_end) == (n, 2 * n - 1)


def test_records_are_json_and_metrics_follow_decisions(profile: ReferenceProfile) -> None:
    monitor = _monitor(profile, debounce=1)
    _feed_hour(monitor, 0, shift=1.0, seed=20)
    decisions = monitor.evaluate(HOUR)
    records = [json.loads(json.dumps(d.to_record())) for d in decisions]
    assert {r["event"] for r in records} == {"drift_detected", "drift_check"}
    assert all(r["v"] == 1 and r["model_version"] == 3 for r in records)
    detected = [r for r in records if r["event"] == "drift_detected"]
    assert {(r["monitor"], r["feature"]) for r in detected} == {
        ("feature_psi", "amount"), ("feature_ks", "amount"), ("feature_tail", "amount")}

    registry = CollectorRegistry()
    metrics = DriftMetrics(registry)
    metrics.update(decisions)
    value = registry.get_sample_value
    psi_amount = _by_key(decisions, "feature_psi", "amount").statistic
    assert value("factory_drift_statistic",
                 {"monitor": "feature_psi", "feature": "amount"}) == psi_amount
    assert value("factory_drift_detected", {"monitor": "feature_psi"}) == 1
    assert value("factory_drift_detected", {"monitor": "score_psi"}) == 0
    assert value("factory_drift_detected", {"monitor": "page_hinkley"}) == 0
    metrics.update([])
    assert value("factory_drift_detected", {"monitor": "feature_psi"}) == 0


def _warming(n: int, seed: int, days: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows over ``days`` days whose ``count`` is a 30-day window filling from day 0:
    it grows for 30 days, then stays put."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0.0, days * DAY, n))
    features = _features(n, seed)
    features[:, 1] = rng.poisson(2.0 * np.minimum(times / (30 * DAY), 1.0) * 30)
    return features, times


def _profile_of(features: np.ndarray, times: np.ndarray, *, warm: bool) -> ReferenceProfile:
    scores = np.random.default_rng(1).beta(0.2, 20.0, len(features))
    if not warm:
        return ReferenceProfile.from_frame(features, NAMES, scores)
    return ReferenceProfile.from_frame(features, NAMES, scores, event_times=times,
                                       history_start=0.0, warm_up_s=(0.0, 30 * DAY, 0.0))


def _day_decisions(profile: ReferenceProfile, features: np.ndarray, times: np.ndarray,
                   day: int) -> list[DriftDecision]:
    monitor = _monitor(profile, debounce=1, window_seconds=DAY)
    rows = (times >= day * DAY) & (times < (day + 1) * DAY)
    monitor.observe(features[rows], np.full(int(rows.sum()), 0.01), times[rows])
    return monitor.evaluate((day + 1) * DAY - 1)


def test_a_window_still_filling_raises_no_alarm_once_the_profile_skips_its_warm_up() -> None:
    """Trained on days 0-40 of a stream that started on day 0, the 30-day count grows
    for 30 days: a profile over every row calls a steady day 45 a shift, one over the
    complete rows does not; live rows of the warm-up are skipped too."""
    features, times = _warming(80_000, seed=3, days=40)
    later, later_times = _warming(100_000, seed=4, days=50)
    naive = _by_key(_day_decisions(_profile_of(features, times, warm=False), later,
                                   later_times, 45), "feature_psi", "count")
    assert naive.exceeded
    profile = _profile_of(features, times, warm=True)
    assert profile.complete_from(1) == 30 * DAY and profile.complete_from(0) == 0.0
    steady = _day_decisions(profile, later, later_times, 45)
    assert not _by_key(steady, "feature_psi", "count").exceeded
    assert not _by_key(steady, "feature_tail", "count").exceeded
    # A day of the warm-up is no evidence either way: the count is not judged on it.
    early = _day_decisions(profile, later, later_times, 10)
    assert {d.feature for d in early if d.monitor == "feature_psi"} == {"amount", "risk"}


def test_a_feature_without_enough_complete_rows_is_not_profiled_and_not_judged() -> None:
    features, times = _warming(40_000, seed=3, days=31)
    profile = ReferenceProfile.from_frame(
        features, NAMES, np.full(len(features), 0.01), event_times=times, history_start=0.0,
        warm_up_s=(0.0, 30.9 * DAY, 0.0), score_warm_up_s=31 * DAY, min_complete_rows=1000)
    assert profile.unprofiled == ["count", "score"]
    again = ReferenceProfile.from_json(profile.to_json())
    assert again.unprofiled == ["count", "score"] and again.complete_from(1) == 30.9 * DAY
    later, later_times = _warming(50_000, seed=4, days=40)
    decisions = _day_decisions(again, later, later_times, 35)
    assert {d.feature for d in decisions} == {"amount", "risk"}


def test_the_tail_monitor_flags_a_new_cluster_beyond_the_reference_extremes(
        profile: ReferenceProfile) -> None:
    """1 % of a day's rows with a count far beyond any seen (a card tested 30 times)
    move no decile of the count, yet the tail monitor calls it; a steady day does not."""
    steady = _monitor(profile, debounce=1)
    _feed_hour(steady, 0, shift=0.0, seed=20)
    assert not _by_key(steady.evaluate(HOUR), "feature_tail", "count").exceeded
    burst = _monitor(profile, debounce=1)
    features = _features(2000, seed=21)
    features[:20, 1] = np.arange(20, 40)
    burst.observe(features, np.full(2000, 0.01), np.linspace(1.0, HOUR - 1.0, 2000))
    decisions = burst.evaluate(HOUR)
    tail = _by_key(decisions, "feature_tail", "count")
    assert tail.detected and tail.details["beyond"] >= 20 and tail.details["p_value"] < 1e-6
    assert not _by_key(decisions, "feature_psi", "count").exceeded


def test_the_tail_monitor_counts_a_busy_card_once(profile: ReferenceProfile) -> None:
    """Twenty rows beyond the extremes from one card are one surprise, not twenty; from
    twenty cards they are a new cluster."""
    def tail_of(cards: np.ndarray) -> DriftDecision:
        monitor = _monitor(profile, debounce=1)
        features = _features(2000, seed=21)
        features[:20, 1] = np.arange(20, 40)
        monitor.observe(features, np.full(2000, 0.01), np.linspace(1.0, HOUR - 1.0, 2000),
                        cards)
        return _by_key(monitor.evaluate(HOUR), "feature_tail", "count")

    one_card = np.arange(2000)
    one_card[:20] = 7
    busy = tail_of(one_card)
    assert not busy.exceeded and busy.details["beyond"] < 5
    assert tail_of(np.arange(2000)).detected


def test_a_terminal_feature_counts_a_busy_terminal_once() -> None:
    """Twenty cards paying at one busy terminal put twenty rows of its 7-day count beyond
    the extremes: one terminal, not a new cluster."""
    features = _features(20_000, seed=0)
    profile = ReferenceProfile.from_frame(features, NAMES, np.full(20_000, 0.01),
                                          entities=("transaction", "terminal", "terminal"))

    def tail_of(terminals: np.ndarray) -> DriftDecision:
        monitor = _monitor(profile, debounce=1)
        rows = _features(2000, seed=21)
        rows[:20, 1] = np.arange(20, 40)
        monitor.observe(rows, np.full(2000, 0.01), np.linspace(1.0, HOUR - 1.0, 2000),
                        np.arange(2000), terminals)
        return _by_key(monitor.evaluate(HOUR), "feature_tail", "count")

    one_terminal = np.arange(2000)
    one_terminal[:20] = 3
    assert not tail_of(one_terminal).exceeded
    assert tail_of(np.arange(2000)).detected
