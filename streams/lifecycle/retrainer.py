"""The retrainer: drift monitoring, retraining, the gate and the hot swap, as one service.

Each :meth:`Retrainer.step` reads the feature-log parts the scoring workers wrote since
the previous step and the labels that arrived, feeds the champion's drift monitor with
the new rows and with the labels that have matured by "now" (the latest logged event
time), publishes every drift decision on ``model-events`` and decides whether to retrain
(drift, the event-time schedule, or a manual request; one at a time). A retraining
trains a challenger on the logged rows whose labels are known, warm-started from the
champion, leaving out the latest ``gate_days`` of matured rows; the gate judges both
models on those rows; a challenger that passes is swapped in through the router
(:mod:`streams.lifecycle.swap`), and after enough of its live scores have matured labels it is
compared with its predecessor on them and rolled back when worse.

``factory retrainer --feature-log DIR`` runs it (:func:`connect` builds it on the
services). Its settings are a :class:`~streams.lifecycle.retrainer_config.RetrainerConfig`;
what a step and a retraining return is in :mod:`streams.lifecycle.retrainer_reports`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from models.feature_log import FEEDBACK_COLUMN, frame_from_feature_log, recent_rows
from models.gate import GateWindow, evaluate_gate
from models.registry import Registry
from models.simulator import SECONDS_PER_DAY
from models.trainer import load_weights, train_version, weights_path
from models.triton_config import MODEL_NAME
from streams.clients.router import ModelRouter
from streams.lifecycle.champion import ChampionMonitor, choose_champion
from streams.lifecycle.gate_window import gate_window
from streams.lifecycle.model_events import ModelEvents, RetrainerMetrics
from streams.lifecycle.retrain_inputs import FeatureLogTail, LabelBook, LabelFeed
from streams.lifecycle.retrain_policy import (
    GateSplit,
    RollbackVerdict,
    ShadowStats,
    TriggerDecision,
    TriggerState,
    due_trigger,
    fit_window,
    gate_split,
    shadow_agreement,
)
from streams.lifecycle.retrainer_config import RetrainerConfig
from streams.lifecycle.retrainer_reports import RetrainOutcome, StepReport
from streams.lifecycle.swap import (
    ModelSwapper,
    SwapBusy,
    SwapError,
    SwapReport,
    compare_live,
)
from streams.settings import Settings
from streams.topics import FEEDBACK

log = logging.getLogger(__name__)


class Retrainer:
    """The service's state and its steps; see the module docstring.

    ``load``, ``ready`` and ``router`` reach Triton and the route (see
    :class:`streams.lifecycle.swap.ModelSwapper`); ``labels`` is the ``labels`` reader (``None``:
    no labels).
    """

    def __init__(self, config: RetrainerConfig, *, registry: Registry, router: ModelRouter,
                 load: Callable[[list[int]], None], ready: Callable[[], list[int]],
                 events: ModelEvents | None = None,
                 metrics: RetrainerMetrics | None = None,
                 labels: LabelFeed | None = None,
                 feedback: LabelFeed | None = None) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics or RetrainerMetrics(
            drift_hold_seconds=config.thresholds.cooldown_seconds)
        self.events = events or ModelEvents(None, metrics=self.metrics)
        self.labels = labels
        self.feedback = feedback
        self.swapper = ModelSwapper(load=load, ready=ready, router=router, registry=registry,
                                    events=self.events, shadow_stats=self.shadow_stats,
                                    config=config.swap, repo_dir=config.repo_dir)
        self.tail = FeatureLogTail(config.feature_log, config.log_features)
        self.book = LabelBook()
        self.state = TriggerState()
        self.champion = 0
        self.current: ChampionMonitor
        self._watch: tuple[int, int] | None = None
        self._manual: str | None = None
        self._lock = threading.Lock()

    # State of the champion -----------------------------------------------------------

    def onnx_path(self, version: int) -> Path:
        return self.config.repo_dir / MODEL_NAME / str(version) / "model.onnx"

    def start(self) -> int:
        """Find (or, on a first start, choose) the champion and make the route serve it."""
        champion = choose_champion(self.registry, self.config.repo_dir)
        self._adopt(champion)
        self.swapper.ensure_serving(champion)
        return champion

    def _adopt(self, version: int) -> None:
        self.champion = version
        self.current = ChampionMonitor(self.registry, version, self.config.thresholds,
                                       self.config.log_features)
        self.state.schedule_anchor = self.current.schedule_anchor
        self.metrics.model_version.set(version)

    # One step ------------------------------------------------------------------------

    def request_retrain(self, reason: str = "requested") -> bool:
        """Ask for a retraining at the next step; ``False`` when one is already asked."""
        with self._lock:
            if self._manual is not None:
                return False
            self._manual = reason
            return True

    def follow_champion(self) -> bool:
        """Adopt a champion promoted or rolled back by another process (``factory model
        promote`` or ``rollback`` beside a running ``factory serve``); ``True`` when it
        changed. Its monitor starts afresh and no rollback check of ours stays pending."""
        champion = self.registry.champion()
        if champion is None or champion == self.champion or self.state.busy:
            return False
        log.info("the champion is now %d (was %d), changed by another process",
                 champion, self.champion)
        self._adopt(champion)
        self._watch = None
        self.metrics.drift_clear()
        return True

    def step(self) -> StepReport:
        """Read, monitor, publish, and retrain when a trigger is due (see the module)."""
        self.follow_champion()
        rows = self.tail.poll()
        self.current.observe(rows)
        labels = self.labels.poll() if self.labels is not None else []
        report = StepReport(now=self.tail.now, rows=len(rows), labels=self.book.add(labels))
        if self.feedback is not None:
            report.feedback = self.book.add(self.feedback.poll(), feedback=True)
        now = report.now
        if now is None:
            return report
        if self.state.schedule_anchor is None:
            self.state.schedule_anchor = float(self.tail.index["event_time"].min())
        matured = self.book.take_matured(self.tail.index, now)
        report.matured = len(matured)
        self.current.observe_labels(matured)
        decisions = self.current.evaluate(now) if len(rows) or len(matured) else []
        for decision in decisions:
            self.events.publish_record(decision.to_record(), flush=False)
        self.events.flush()
        self.metrics.drift_update(decisions, now)
        self.metrics.event_time.set(now)
        report.decisions = len(decisions)
        report.detected = [f"{d.monitor}:{d.feature}" for d in decisions if d.detected]
        report.rollback = self.check_rollback(now)
        with self._lock:
            manual, self._manual = self._manual, None
        report.trigger = due_trigger(self.config.trigger, self.state, now, decisions, manual)
        if report.trigger is not None:
            report.outcome = self.retrain(report.trigger)
        horizon = now - self.config.retention_days * SECONDS_PER_DAY
        self.tail.prune(horizon)
        self.book.prune(horizon)
        return report

    def run(self, stop: threading.Event | None = None) -> None:
        """Step every ``poll_s`` seconds until ``stop`` is set."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - a failed step is retried at the next one
                log.exception("retrainer step failed")
            stop.wait(self.config.poll_s)

    def close(self) -> None:
        """Flush ``model-events`` and close the labels and feedback readers and the
        router."""
        self.events.close()
        for feed in (self.labels, self.feedback):
            if feed is not None:
                feed.close()
        close = getattr(self.swapper.router, "close", None)
        if close is not None:
            close()

    # Retraining and the gate -----------------------------------------------------------

    def retrain(self, trigger: TriggerDecision) -> RetrainOutcome:
        """Train a challenger on the matured log, gate it, and swap it in when it passes."""
        now = self.tail.now
        assert now is not None, "retraining needs a feature log"
        cycle_started = time.monotonic()
        parent = self.champion
        warm = self.config.warm_start and weights_path(self.registry, parent).exists()
        self.state.busy, self.state.last_started = True, now
        self.metrics.retraining.set(1)
        self.events.publish("retrain_started", trigger=trigger.kind, reason=trigger.reason,
                            details=trigger.details, parent=parent, warm_start=warm,
                            event_time=now)
        try:
            clock = time.monotonic()
            frame = frame_from_feature_log(self.config.feature_log, self.book.records(),
                                           as_of=now, recipe=self.config.recipe)
            # Investigators' labels train beside the window; the gate judges the
            # delayed labels only (reviewed cards are no sample of the traffic).
            from_feedback = frame[FEEDBACK_COLUMN].to_numpy(bool)
            feedback, frame = frame[from_feedback], frame[~from_feedback]
            times = frame["TX_DATETIME"].to_numpy("datetime64[s]").astype(np.int64)
            split = gate_split(times, self.config.gate_days)
            end, valid_days = fit_window(split, self.config.valid_days,
                                         self.config.validate_on_gate)
            entry = train_version(
                frame, registry=self.registry, repo_dir=self.config.repo_dir,
                trigger=trigger.kind, parent=parent, valid_days=valid_days,
                recipe=self.config.recipe, seed=self.config.seed, device="cpu",
                end=end, warm_start=warm,
                feedback=feedback, feedback_share=self.config.feedback_share,
                score_reference=recent_rows(self.config.feature_log, split.end,
                                            self.config.recipe))
            train_seconds = time.monotonic() - clock
            self.metrics.seconds.labels(stage="train").set(train_seconds)
            return self.challenge(entry.version, self.gate_window(frame, split),
                                  cycle_started=cycle_started, train_seconds=train_seconds,
                                  trigger=trigger, split=split)
        except Exception as exc:  # noqa: BLE001 - reported; the champion keeps serving
            log.exception("retraining failed")
            self.events.publish("retrain_failed", trigger=trigger.kind,
                                reason=f"{type(exc).__name__}: {exc}"[:500], parent=parent)
            return RetrainOutcome("failed", reasons=[str(exc)])
        finally:
            self.state.busy = False
            self.metrics.retraining.set(0)

    def gate_window(self, frame: pd.DataFrame, split: GateSplit) -> GateWindow:
        """The labelled rows of ``frame`` in the gate window."""
        return gate_window(frame, split, self.config.recipe.features)

    def challenge(self, version: int, window: GateWindow, *,
                  cycle_started: float | None = None, train_seconds: float | None = None,
                  trigger: TriggerDecision | None = None,
                  split: GateSplit | None = None) -> RetrainOutcome:
        """Gate a published version against the champion; swap it in when it passes.

        A version that fails is marked ``rejected`` and never loaded into Triton: the
        gate's structural check (the graph opens, its tensors match ``config.pbtxt``)
        runs before anything else.
        """
        torch_model = None
        if weights_path(self.registry, version).exists():
            torch_model = load_weights(weights_path(self.registry, version))[0]
        champion = self.onnx_path(self.champion)
        report = evaluate_gate(self.onnx_path(version), window, challenger_torch=torch_model,
                               champion=champion if champion.exists() else None,
                               config=self.config.gate)
        self.metrics.seconds.labels(stage="gate").set(report.seconds)
        context = {"version": version, "parent": self.champion,
                   "trigger": trigger.kind if trigger else "manual",
                   "train_seconds": train_seconds, "gate_seconds": report.seconds,
                   "as_of": self.tail.now,
                   "gate_window": {"start": split.start, "end": split.end} if split else None}
        record = report.to_record(**context)
        self.registry.record_gate(version, record)
        outcome = RetrainOutcome("rejected", version, list(report.reasons), report,
                                 train_seconds=train_seconds)
        if not report.passed:
            self.registry.update_status(version, "rejected", "; ".join(report.reasons))
            self.events.publish_record(record)
            return outcome
        self.events.publish_record(record)
        outcome.swap = self.swap_to(version, reason=f"{context['trigger']}: passed the gate",
                                    cycle_started=cycle_started)
        outcome.status = "promoted" if outcome.swap is not None else "failed"
        return outcome

    # Swap and rollback -------------------------------------------------------------------

    def shadow_stats(self, version: int) -> ShadowStats:
        """Agreement of shadow ``version`` with the serving scores logged so far."""
        self.current.observe(self.tail.poll())
        index = self.tail.index
        rows = index[index["shadow_version"] == version]
        return shadow_agreement(rows["score"].to_numpy(), rows["shadow_score"].to_numpy())

    def swap_to(self, version: int, *, reason: str = "manual",
                cycle_started: float | None = None) -> SwapReport | None:
        """Shadow, promote and swap in ``version`` (loaded beside the champion first).

        The graph is checked against ``config.pbtxt`` before Triton sees it, also when
        this is called directly rather than after the gate (:mod:`streams.lifecycle.swap`).
        """
        old = self.champion
        was_busy, self.state.busy = self.state.busy, True
        try:
            report = self.swapper.swap(old, version, reason=reason,
                                       cycle_started=cycle_started or time.monotonic())
        except SwapError as exc:
            log.warning("swap to %d failed: %s", version, exc)
            if isinstance(exc, SwapBusy):
                self.registry.update_status(version, "candidate", f"not swapped in: {exc}")
            elif self.registry.get(version).status != "rejected":
                self.registry.update_status(version, "rejected", str(exc))
            self.events.publish("swap_failed", version=version, serving=old, reason=str(exc))
            return None
        finally:
            self.state.busy = was_busy
        self._adopt(version)
        self.metrics.drift_clear()
        for stage, seconds in (("shadow", report.shadow_seconds), ("swap", report.seconds)):
            self.metrics.seconds.labels(stage=stage).set(seconds)
        if cycle_started is not None:
            self.metrics.seconds.labels(stage="cycle").set(time.monotonic() - cycle_started)
        self._watch = (version, old)
        return report

    def check_rollback(self, now: float) -> RollbackVerdict | None:
        """Once enough of the promoted model's live scores have labels, keep it or roll back."""
        if self._watch is None:
            return None
        new, old = self._watch
        verdict = compare_live(
            self.tail, self.book, new, self.onnx_path(old), now,
            features=self.config.log_features, ap_tolerance=self.config.gate.ap_tolerance,
            cp100_tolerance=self.config.gate.cp100_tolerance,
            min_rows=self.config.rollback_min_rows,
            min_positives=self.config.rollback_min_positives)
        if verdict is None:
            return None
        if verdict.roll_back is None:
            return verdict
        self._watch = None
        self.events.publish("rollback_check", version=new, previous=old, **verdict.to_record())
        if verdict.roll_back:
            self.swapper.roll_back(new, old, reason="; ".join(verdict.reasons),
                                   figures=verdict.to_record())
            self._adopt(old)
        return verdict


def connect(config: RetrainerConfig, settings: Settings, *, kafka: str, redis_url: str,
            triton_url: str, labels_group: str = "factory-retrainer",
            labels_start: dict[int, int] | None = None,
            metrics: RetrainerMetrics | None = None,
            feedback_start: dict[int, int] | None = None) -> Retrainer:
    """A retrainer on real services: Kafka (labels, model-events), the router in Redis,
    Triton (``triton_url``: one endpoint, or several comma-separated, each loaded and
    unloaded alike), and the registry of the settings."""
    from streams.lifecycle.swap import triton_loader, triton_ready_versions

    metrics = metrics or RetrainerMetrics(drift_hold_seconds=config.thresholds.cooldown_seconds)
    return Retrainer(
        config, registry=Registry(settings.model_registry_dir, repo_dir=config.repo_dir),
        router=ModelRouter(redis_url), load=triton_loader(triton_url, config.repo_dir),
        ready=lambda: triton_ready_versions(triton_url),
        events=ModelEvents(kafka, settings, metrics), metrics=metrics,
        labels=LabelFeed(kafka, settings, labels_group, start=labels_start),
        feedback=LabelFeed(kafka, settings, f"{labels_group}-feedback", start=feedback_start,
                           topic=FEEDBACK))
