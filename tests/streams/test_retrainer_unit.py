"""The retrainer without services: its pure decisions, its inputs, its metrics, and one
retraining, swap and rollback end to end against an in-memory router and Triton."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest

from models.drift_decisions import DriftDecision, DriftThresholds
from models.extra_features import SERVING_NAMES
from models.gate import GateConfig
from models.model_version import ModelVersion, Window
from models.recipe import DEFAULT_RECIPE, Recipe
from models.registry import Registry
from models.simulator import SECONDS_PER_DAY as DAY
from models.trainer import frame_from_simulator, split_windows, train_version
from models.triton_config import DEFAULT_CONFIG_PATH, MODEL_NAME
from streams.clients.router import Route
from streams.dataplane.feature_log import FeatureLog
from streams.lifecycle.champion import ChampionMonitor, profile_path
from streams.lifecycle.model_events import ALERTED_EVENTS, ModelEvents, RetrainerMetrics
from streams.lifecycle.retrain_inputs import FeatureLogTail, LabelBook
from streams.lifecycle.retrain_policy import (
    DriftLatch,
    TriggerPolicy,
    TriggerState,
    due_trigger,
    fit_window,
    gate_split,
    rollback_verdict,
    shadow_agreement,
)
from streams.lifecycle.retrainer import Retrainer
from streams.lifecycle.retrainer_config import RetrainerConfig
from streams.lifecycle.swap import SwapConfig, score_onnx
from streams.records import Label

LOG_FEATURES = [SERVING_NAMES[c] for c in DEFAULT_RECIPE.features]


def decision(monitor: str = "score_psi", detected: bool = True) -> DriftDecision:
    return DriftDecision(monitor, "", 0.5, 0.2, 0.0, DAY, 5000, detected, True)  # type: ignore[arg-type]


# Triggers -------------------------------------------------------------------------------

def test_schedule_is_due_after_schedule_days_of_event_time() -> None:
    policy = TriggerPolicy(schedule_days=7)
    state = TriggerState(schedule_anchor=10 * DAY)
    assert due_trigger(policy, state, 16.9 * DAY) is None
    due = due_trigger(policy, state, 17 * DAY)
    assert due is not None and due.kind == "schedule" and due.details["due"] == 17 * DAY
    assert due_trigger(policy, TriggerState(), 100 * DAY) is None, "no anchor, no schedule"
    assert due_trigger(TriggerPolicy(schedule_days=None), state, 100 * DAY) is None


def test_drift_triggers_only_on_detection_and_outside_the_cooldown() -> None:
    policy = TriggerPolicy(schedule_days=None, cooldown_seconds=DAY)
    state = TriggerState()
    assert due_trigger(policy, state, 5 * DAY, [decision(detected=False)]) is None
    due = due_trigger(policy, state, 5 * DAY, [decision("feature_psi"), decision()])
    assert due is not None and due.kind == "drift"
    assert due.details["monitors"] == ["feature_psi", "score_psi"]
    assert due.details["decision"]["event"] == "drift_detected"
    state.last_started = 5 * DAY
    assert due_trigger(policy, state, 5.5 * DAY, [decision()]) is None, "cooling down"
    assert due_trigger(policy, state, 6 * DAY, [decision()]) is not None
    # The cooldown holds back the schedule too, so a rejected challenger is not retrained
    # at every step.
    state.schedule_anchor = 0.0
    assert due_trigger(TriggerPolicy(7, DAY), state, 5.5 * DAY + 7 * DAY - DAY) is not None
    assert due_trigger(TriggerPolicy(7, DAY), state, 5.5 * DAY) is None


def test_while_a_drift_persists_the_schedule_runs_every_follow_up_days() -> None:
    policy = TriggerPolicy(schedule_days=7, cooldown_seconds=DAY, follow_up_days=2,
                           follow_up_span_days=14)
    state = TriggerState(schedule_anchor=10 * DAY)
    assert due_trigger(policy, state, 12 * DAY) is None, "no drift: the weekly schedule"
    # A detection during a retraining is not queued, but remembered.
    state.busy = True
    assert due_trigger(policy, state, 12 * DAY, [decision()]) is None
    assert state.last_detected == 12 * DAY
    state.busy, state.last_started = False, 11 * DAY
    due = due_trigger(policy, state, 12.5 * DAY)
    assert due is not None and due.kind == "drift" and due.details["follow_up"]
    assert due.details["due"] == 12 * DAY
    # The promoted challenger's data ended at 13 days: the next follow-up is due at 15.
    state.schedule_anchor, state.last_started = 13 * DAY, 12.5 * DAY
    assert due_trigger(policy, state, 14.9 * DAY) is None
    assert due_trigger(policy, state, 15 * DAY).details["follow_up"]  # type: ignore[union-attr]
    # Fourteen days after the last detection the weekly schedule is back.
    state.schedule_anchor = 23 * DAY
    assert due_trigger(policy, state, 25.5 * DAY) is not None, "still within the span"
    assert due_trigger(policy, state, 26.5 * DAY) is None, "the span ended: weekly again"
    assert due_trigger(policy, state, 30 * DAY).kind == "schedule"  # type: ignore[union-attr]
    off = TriggerPolicy(schedule_days=7, follow_up_days=None)
    assert due_trigger(off, TriggerState(schedule_anchor=0.0, last_detected=0.0),
                       3 * DAY) is None


def test_one_retraining_at_a_time_and_manual_requests_win() -> None:
    policy = TriggerPolicy(schedule_days=7)
    state = TriggerState(busy=True, last_started=0.0, schedule_anchor=0.0)
    assert due_trigger(policy, state, 30 * DAY, [decision()], manual="by hand") is None
    state.busy = False
    due = due_trigger(policy, state, 0.5 * DAY, [decision()], manual="by hand")
    assert due is not None and (due.kind, due.reason) == ("manual", "by hand")
    assert due_trigger(policy, state, 30 * DAY, [decision()]).kind == "drift"  # type: ignore[union-attr]


# Gate window --------------------------------------------------------------------------

def test_gate_window_is_the_latest_complete_matured_days() -> None:
    times = np.arange(0, 20.5 * DAY, 3600.0)
    split = gate_split(times, gate_days=7)
    assert (split.start, split.end) == (13 * DAY, 20 * DAY)
    with pytest.raises(ValueError, match="no matured"):
        gate_split(np.array([]))


def test_training_ends_where_the_gate_window_starts() -> None:
    rng = np.random.default_rng(0)
    n = 6000
    times = np.sort(rng.uniform(0, 60 * DAY, n))
    frame = pd.DataFrame(rng.normal(size=(n, len(DEFAULT_RECIPE.features))),
                         columns=list(DEFAULT_RECIPE.features))
    frame["TX_DATETIME"] = pd.to_datetime(times, unit="s")
    frame["TX_TIME_DAYS"] = (times // DAY).astype(int)
    frame["CUSTOMER_ID"] = rng.integers(0, 50, n)
    frame["TX_FRAUD"] = (rng.random(n) < 0.05).astype(int)
    split = gate_split(times[times <= 53.5 * DAY])
    assert split.end - split.start == 7 * DAY and split.end == 53 * DAY

    def fitted(validate_on_gate: bool) -> tuple[pd.Series, pd.Series]:
        end, valid_days = fit_window(split, 3, validate_on_gate)
        train, valid, *_ = split_windows(frame, end=end, valid_days=valid_days,
                                         recipe=Recipe(train_weeks=2))
        return (train["TX_DATETIME"].astype("int64") // 10**9,
                valid["TX_DATETIME"].astype("int64") // 10**9)

    # Held apart: neither training nor early stopping sees the gate window.
    train, valid = fitted(False)
    assert valid.max() < split.start and valid.min() >= split.start - 3 * DAY
    assert train.max() < valid.min()
    # Validating on the gate: the training rows end where the gate window starts, and the
    # early-stopping rows are exactly the gate window's.
    train, valid = fitted(True)
    assert train.max() < split.start <= train.max() + DAY
    in_gate = times[(times >= split.start) & (times < split.end)]
    assert sorted(valid) == sorted(np.floor(in_gate).astype(np.int64))


# Rollback decision ----------------------------------------------------------------------

def synthetic_window(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.05).astype(int)
    good = np.clip(0.6 * labels + rng.normal(0.2, 0.15, n), 0, 1)
    cards = rng.integers(0, 800, n)
    days = np.repeat(np.arange(8), n // 8)
    return labels, good, cards, days, rng.random(n)


def test_rollback_when_the_promoted_model_is_worse_beyond_the_tolerance() -> None:
    labels, good, cards, days, noise = synthetic_window()
    worse = rollback_verdict(noise, good, labels, cards, days, min_rows=1000)
    assert worse.roll_back is True
    assert any(r.startswith("average precision") for r in worse.reasons)
    assert worse.new is not None and worse.old is not None
    assert worse.new.average_precision < worse.old.average_precision
    kept = rollback_verdict(good, noise, labels, cards, days, min_rows=1000)
    assert kept.roll_back is False and not kept.reasons
    same = rollback_verdict(good, good + 1e-4, labels, cards, days, min_rows=1000)
    assert same.roll_back is False, "within the tolerance"
    assert rollback_verdict(good, noise, labels, cards, days, min_rows=5000).roll_back is None
    no_fraud = np.zeros_like(labels)
    assert rollback_verdict(good, noise, no_fraud, cards, days, min_rows=10).roll_back is None


def test_shadow_agreement_counts_failed_shadow_calls() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.9])
    stats = shadow_agreement(scores, scores)
    assert stats.rows == 4 and stats.correlation == pytest.approx(1.0)
    assert stats.mean_abs_diff == 0.0 and stats.failed == 0
    stats = shadow_agreement(scores, np.array([0.1, np.nan, 0.35, np.nan]))
    assert (stats.rows, stats.failed) == (2, 2)
    assert stats.max_abs_diff == pytest.approx(0.05)
    assert shadow_agreement(scores[:0], scores[:0]).correlation is None


# Metrics and events ---------------------------------------------------------------------

def test_drift_alarm_holds_until_promotion_or_the_hold_ends() -> None:
    latch = DriftLatch(hold_seconds=DAY)
    assert latch.update([decision()], 10 * DAY)["score_psi"] == 1
    assert latch.update([decision(detected=False)], 10.5 * DAY)["score_psi"] == 1
    assert latch.update([], 11 * DAY)["score_psi"] == 0
    latch.update([decision("concept_ap")], 12 * DAY)
    assert latch.clear()["concept_ap"] == 0 and not latch.raised


def test_metrics_expose_every_alerted_event_and_the_latched_gauge() -> None:
    metrics = RetrainerMetrics(drift_hold_seconds=DAY)
    events = ModelEvents(None, metrics=metrics)
    events.publish("promoted", version=2, shadow={"correlation": float("nan")})
    metrics.drift_update([decision()], 5 * DAY)
    metrics.drift_update([decision(detected=False)], 5.1 * DAY)
    text = generate_latest(metrics.registry).decode()
    for event in ALERTED_EVENTS:
        assert f'factory_model_events_total{{event="{event}"}}' in text
    assert 'factory_model_events_total{event="promoted"} 1.0' in text
    assert 'factory_drift_detected{monitor="score_psi"} 1.0' in text
    assert events.sent[0]["shadow"]["correlation"] is None, "NaN is not JSON"
    metrics.drift_clear()
    assert 'factory_drift_detected{monitor="score_psi"} 0.0' in generate_latest(
        metrics.registry).decode()


# Inputs ---------------------------------------------------------------------------------

def write_part(root: Path, tx_ids: np.ndarray, times: np.ndarray, version: int = 1,
               shadow: int = 0, scores: np.ndarray | None = None,
               features: np.ndarray | None = None) -> None:
    n = len(tx_ids)
    ids = {"tx_id": tx_ids, "event_time": times.astype(np.float64),
           "card_id": tx_ids % 7, "terminal_id": tx_ids % 5}
    scores = np.full(n, 0.1) if scores is None else scores
    features = np.ones((n, len(LOG_FEATURES))) if features is None else features
    FeatureLog(root, LOG_FEATURES).write(ids, features, scores, version,
                                         scores + 0.01 if shadow else None, shadow)


def test_feature_log_tail_reads_each_part_once_and_joins_matured_labels(tmp_path: Path) -> None:
    tail = FeatureLogTail(tmp_path, LOG_FEATURES)
    assert tail.poll().empty and tail.now is None
    write_part(tmp_path, np.arange(10), np.arange(10) * 3600.0)
    first = tail.poll()
    assert len(first) == 10 and tail.now == 9 * 3600.0
    assert (first["shadow_version"] == 0).all() and first["shadow_score"].isna().all()
    write_part(tmp_path, np.arange(5, 15), np.arange(5, 15) * 3600.0, version=1, shadow=2)
    second = tail.poll()
    assert second["tx_id"].tolist() == list(range(10, 15)), "redelivered rows are dropped"
    assert (second["shadow_version"] == 2).all()
    assert tail.poll().empty and len(tail.index) == 15

    book = LabelBook()
    labels = [Label(int(t), 0, 0, t * 3600.0, int(t == 3), t * 3600.0 + 7200.0)
              for t in range(20)]
    assert book.add(labels) == 20 and book.add(labels[:3]) == 0
    matured = book.take_matured(tail.index, now=6 * 3600.0)
    assert matured["tx_id"].tolist() == [0, 1, 2, 3, 4]
    assert matured.loc[matured["tx_id"] == 3, "is_fraud"].item() == 1
    assert book.take_matured(tail.index, now=6 * 3600.0).empty, "handed out once"
    # Labels of rows not logged yet wait for their row.
    assert book.take_matured(tail.index, now=100 * 3600.0)["tx_id"].max() == 14
    write_part(tmp_path, np.arange(15, 20), np.arange(15, 20) * 3600.0)
    tail.poll()
    assert book.take_matured(tail.index, now=100 * 3600.0)["tx_id"].tolist() == [
        15, 16, 17, 18, 19]


# One retraining, swap and rollback, services replaced by memory -------------------------

FAST = Recipe(train_weeks=2, hidden=(16,), n_bins=4, n_members=1, max_epochs=3, patience=2)


class MemoryRouter:
    """The router's contract in memory; every worker is always drained."""

    def __init__(self) -> None:
        self.current: Route | None = None
        self.history: list[Route] = []

    def route(self) -> Route | None:
        return self.current

    def _set(self, serving: int, shadow: int) -> Route:
        generation = self.current.generation + 1 if self.current else 1
        self.current = Route(serving, shadow, generation)
        self.history.append(self.current)
        return self.current

    def promote(self, version: int) -> Route:
        return self._set(version, 0)

    def set_shadow(self, version: int) -> Route:
        assert self.current is not None
        return self._set(self.current.serving, version)

    def wait_drained(self, generation: int, timeout_s: float = 60.0) -> bool:
        return True

    @contextlib.contextmanager
    def lock(self, holder: str) -> Iterator[None]:
        yield


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scheduled_retraining_swaps_in_the_challenger_and_a_worse_one_is_rolled_back(
    tmp_path: Path,
) -> None:
    frame = frame_from_simulator(customers=200, terminals=400, days=56)
    repo = tmp_path / "repo"
    (repo / MODEL_NAME).mkdir(parents=True)
    shutil.copyfile(DEFAULT_CONFIG_PATH, repo / MODEL_NAME / "config.pbtxt")
    registry = Registry(tmp_path / "registry", repo_dir=repo)
    first = train_version(frame, registry=registry, repo_dir=repo, trigger="initial",
                          recipe=FAST, end="2018-04-28", device="cpu")
    registry.set_champion(first.version, "test")

    # The stream so far: every row scored by version 1, labels 7 days later.
    times = (frame["TX_DATETIME"].astype("int64") // 10**9).to_numpy()
    onnx = repo / MODEL_NAME / "1" / "model.onnx"
    features = frame[list(FAST.features)].to_numpy(np.float64)
    log_dir = tmp_path / "feature_log"
    ids = {"tx_id": frame["TRANSACTION_ID"].to_numpy(), "event_time": times.astype(float),
           "card_id": frame["CUSTOMER_ID"].to_numpy(),
           "terminal_id": frame["TERMINAL_ID"].to_numpy()}
    FeatureLog(log_dir, LOG_FEATURES).write(ids, features, score_onnx(onnx, features), 1)
    labels = [Label(int(t), int(c), 0, float(e), int(y), float(e) + 7 * DAY)
              for t, c, e, y in zip(frame["TRANSACTION_ID"], frame["CUSTOMER_ID"], times,
                                    frame["TX_FRAUD"], strict=True)]

    loaded: list[list[int]] = [[1]]
    router = MemoryRouter()
    config = RetrainerConfig(
        feature_log=log_dir, repo_dir=repo, recipe=FAST, rollback_min_rows=500,
        # Page-Hinkley off: the schedule, not an alarm of the tiny model, triggers here.
        thresholds=DriftThresholds(ph_lambda=1e9),
        rollback_min_positives=3,
        gate=dataclasses.replace(GateConfig(), ap_tolerance=1.0, cp100_tolerance=1.0,
                                 ece_max=None, ratio_bounds=None, latency_repeats=5,
                                 config_path=repo / MODEL_NAME / "config.pbtxt"),
        swap=SwapConfig(shadow_rows=10, shadow_timeout_s=0.2, poll_s=0.05))
    retrainer = Retrainer(config, registry=registry, router=router,  # type: ignore[arg-type]
                          load=lambda versions: loaded.append(sorted(versions)),
                          ready=lambda: loaded[-1])
    assert retrainer.start() == 1 and router.current == Route(1, 0, 1)
    retrainer.book.add(labels)

    report = retrainer.step()
    assert report.trigger is not None and report.trigger.kind == "schedule"
    outcome = report.outcome
    assert outcome is not None and outcome.status == "promoted", outcome
    assert outcome.gate is not None and outcome.gate.passed
    assert loaded[-2:] == [[1, 2], [2]], "loaded beside 1, then 1 unloaded"
    assert [(r.serving, r.shadow) for r in router.history] == [(1, 0), (1, 2), (2, 0)]
    entry = registry.get(2)
    assert registry.champion() == 2 and entry.parent == 1 and entry.warm_start
    assert entry.gate is not None and entry.gate["passed"]
    # The gate window is also the one that chose the early-stopping epoch.
    gate = entry.gate["gate_window"]
    valid = entry.metrics["window"]
    gate_start = gate["start"]
    assert pd.Timestamp(valid["start"]).timestamp() == gate["start"]
    assert pd.Timestamp(valid["end"]).timestamp() == gate["end"]
    assert (tmp_path / "registry" / "profiles" / "2.json").exists()
    assert (tmp_path / "registry" / "profiles" / "1.json").exists(), "from the first day"
    names = [e["event"] for e in retrainer.events.sent if e["event"] != "drift_check"]
    assert names == ["retrain_started", "challenger_accepted", "shadow_started", "promoted",
                     "unloaded"]
    assert (repo / MODEL_NAME / "1" / "model.onnx").exists(), "kept for rollback"

    # Version 2 then scores live rows badly: once their labels mature, it goes back (the
    # rollback uses the gate's tolerances; the real ones again from here).
    retrainer.config = dataclasses.replace(config, gate=GateConfig())
    late = frame[times >= gate_start]
    late_times = times[times >= gate_start]
    rng = np.random.default_rng(1)
    write_part(log_dir, late["TRANSACTION_ID"].to_numpy() + 10**8, late_times, version=2,
               scores=rng.random(len(late)),
               features=late[list(FAST.features)].to_numpy(np.float64))
    retrainer.book.add([Label(int(t) + 10**8, int(c), 0, float(e), int(y), float(e) + 7 * DAY)
                        for t, c, e, y in zip(late["TRANSACTION_ID"], late["CUSTOMER_ID"],
                                              late_times, late["TX_FRAUD"], strict=True)])
    report = retrainer.step()
    assert report.rollback is not None and report.rollback.roll_back, report.rollback
    assert report.trigger is None, "the cooldown holds back another retraining"
    assert loaded[-2:] == [[1, 2], [1]]
    assert router.current is not None and router.current.serving == 1
    assert registry.champion() == 1 and registry.get(2).status == "rolled_back"
    assert [e["event"] for e in retrainer.events.sent][-3:] == [
        "rollback_check", "rollback", "unloaded"]


def test_the_champion_monitor_skips_rows_of_its_own_training_period(tmp_path: Path) -> None:
    """A history replayed through a first model is in-sample: it neither profiles the
    model nor feeds its concept-drift monitors."""
    registry = Registry(tmp_path)
    start = pd.Timestamp("2018-04-01")
    end = start + pd.Timedelta(days=35)
    registry.record(ModelVersion(1, window=Window(str(start), str(end - pd.Timedelta(days=7)),
                                                  100, 5),
                                 metrics={"window": {"start": str(end - pd.Timedelta(days=7)),
                                                     "end": str(end)}}))
    monitor = ChampionMonitor(registry, 1, DriftThresholds(), LOG_FEATURES)
    anchor = end.timestamp()
    assert monitor.schedule_anchor == anchor
    rng = np.random.default_rng(0)
    times = anchor + np.arange(-3 * DAY, 2 * DAY, 60.0)
    rows = pd.DataFrame({"event_time": times, "model_version": 1,
                         "score": rng.random(len(times)), "card_id": 1,
                         **{name: rng.random(len(times)) for name in LOG_FEATURES}})
    rows.loc[rows.index[::2], "model_version"] = 2
    kept = monitor._out_of_sample(rows)
    assert len(kept) and (kept["event_time"] >= anchor).all()
    assert (kept["model_version"] == 1).all()
    assert len(kept) == ((rows["event_time"] >= anchor) & (rows["model_version"] == 1)).sum()
    monitor.observe(rows)
    # The reference profile is the first out-of-sample day, not the replayed history.
    assert monitor.monitor is not None
    assert profile_path(registry, 1).exists()
