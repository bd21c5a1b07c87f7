"""``factory model promote`` and ``factory model rollback``: a version made to serve from a
shell through the same gate, shadow and swap as the retrainer.

Promotion of version N over the champion C:

1. the gate (:func:`models.gate.evaluate_gate`) on the latest ``gate_days`` of matured
   rows of the scoring workers' feature log, labels read from the ``labels`` topic:
   N's graph against ``config.pbtxt``, its latency, calibration and quality against C on
   the same rows; a version that fails is marked ``rejected`` and never loaded.
   ``--force`` skips it, and the registry and ``model-events`` say so;
2. the swap (:class:`streams.lifecycle.swap.ModelSwapper`): N loaded beside C, shadowing C until
   enough of its scores are logged (or the traffic stops), promoted in the route, C
   unloaded once every worker has moved on.

Rollback serves the previous champion again, the same way, without a gate. Both hold the
route's lock, so they never interleave with a swap of a running retrainer, which adopts
the new champion at its next step.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.registry import Registry
from models.triton_config import MODEL_NAME
from streams.clients.endpoints import service_endpoints
from streams.clients.router import ModelRouter
from streams.lifecycle.model_events import ModelEvents
from streams.lifecycle.retrain_inputs import FeatureLogTail, LabelFeed
from streams.lifecycle.retrain_policy import ShadowStats, shadow_agreement
from streams.lifecycle.swap import (
    ModelSwapper,
    SwapConfig,
    SwapReport,
    triton_loader,
    triton_ready_versions,
)
from streams.settings import Settings


class PromotionRefused(RuntimeError):
    """The gate refused the version (the message lists its reasons), or it cannot run."""


@dataclass(frozen=True)
class Operation:
    """Where a promotion or rollback reads and acts."""

    settings: Settings
    repo_dir: Path
    feature_log: Path
    gate_days: int = 7
    swap: SwapConfig = dataclasses.field(default_factory=SwapConfig)


def read_labels(kafka: str, settings: Settings, timeout_s: float = 300.0) -> pd.DataFrame:
    """Every label on the ``labels`` topic when called (``tx_id``, ``is_fraud``,
    ``known_at``): read up to the end offsets of that moment, while more may arrive."""
    from confluent_kafka import TopicPartition

    from streams.clients.kafka_io import topic_end_offsets
    from streams.topics import LABELS

    ends = topic_end_offsets(kafka, settings, LABELS)
    feed = LabelFeed(kafka, settings, f"factory-model-cli-{time.time_ns()}")
    records: list[tuple[int, int, float]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            labels = feed.poll(timeout_s=0.5)
            records.extend((lb.tx_id, lb.is_fraud, lb.known_at) for lb in labels)
            positions = feed.consumer.position([TopicPartition(LABELS, p) for p in ends])
            if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0
                   for tp in positions):
                break
            if time.monotonic() > deadline:
                raise PromotionRefused(f"the labels topic was not read to its end in "
                                       f"{timeout_s:.0f} s")
    finally:
        feed.close()
    return pd.DataFrame(records, columns=["tx_id", "is_fraud", "known_at"])


class ModelOperator:
    """Promotion and rollback on the services the settings name (or ``factory up``'s)."""

    def __init__(self, op: Operation) -> None:
        from models.recipe import DEFAULT_RECIPE

        self.op = op
        self.endpoints = service_endpoints(op.settings, "factory model")
        self.registry = Registry(op.settings.model_registry_dir, repo_dir=op.repo_dir)
        self.recipe = DEFAULT_RECIPE
        from models.extra_features import SERVING_NAMES

        self.log_features = [SERVING_NAMES[c] for c in self.recipe.features]
        self.events = ModelEvents(self.endpoints.kafka, op.settings)
        self.router = ModelRouter(self.endpoints.redis, MODEL_NAME)
        self.tail: FeatureLogTail | None = None
        self.swapper = ModelSwapper(
            load=triton_loader(self.endpoints.triton, op.repo_dir),
            ready=lambda: triton_ready_versions(self.endpoints.triton),
            router=self.router, registry=self.registry, events=self.events,
            shadow_stats=self.shadow_stats, config=op.swap, repo_dir=op.repo_dir)

    def close(self) -> None:
        self.events.close()
        self.router.close()

    def onnx_path(self, version: int) -> Path:
        return self.op.repo_dir / MODEL_NAME / str(version) / "model.onnx"

    def serving(self) -> int:
        """The version serving now: the route's, else the registry's champion."""
        route = self.router.route()
        champion = route.serving if route is not None else self.registry.champion()
        if champion is None:
            raise PromotionRefused("nothing serves yet and the registry has no champion")
        return champion

    def shadow_stats(self, version: int) -> ShadowStats:
        """Agreement of shadow ``version`` with the serving scores logged since the swap
        began (the feature log is read from where it stood then)."""
        assert self.tail is not None
        self.tail.poll()
        rows = self.tail.index[self.tail.index["shadow_version"] == version]
        return shadow_agreement(rows["score"].to_numpy(), rows["shadow_score"].to_numpy())

    def _follow_log(self) -> None:
        """Read the feature log to its end now, so that shadow rows count from here."""
        self.tail = FeatureLogTail(self.op.feature_log, self.log_features)
        self.tail.poll()

    def gate(self, version: int, champion: int) -> dict:
        """Run the gate on ``version`` against ``champion``; the record it published."""
        from models.feature_log import frame_from_feature_log
        from models.gate import evaluate_gate
        from models.trainer import load_weights, weights_path
        from streams.lifecycle.gate_window import gate_window
        from streams.lifecycle.retrain_policy import gate_split

        labels = read_labels(self.endpoints.kafka, self.op.settings)
        if not len(labels):
            raise PromotionRefused("the gate has no labels: the labels topic is empty "
                                   "(--force promotes without the gate)")
        try:
            frame = frame_from_feature_log(self.op.feature_log, labels, recipe=self.recipe)
            times = frame["TX_DATETIME"].to_numpy("datetime64[s]").astype(np.int64)
            split = gate_split(times, self.op.gate_days)
        except (ValueError, FileNotFoundError) as exc:
            raise PromotionRefused(f"the gate has no matured rows in {self.op.feature_log}: "
                                   f"{exc} (--force promotes without the gate)") from exc
        window = gate_window(frame, split, self.recipe.features)
        weights = weights_path(self.registry, version)
        torch_model = load_weights(weights)[0] if weights.exists() else None
        report = evaluate_gate(self.onnx_path(version), window, challenger_torch=torch_model,
                               champion=self.onnx_path(champion))
        record = report.to_record(version=version, parent=champion, trigger="manual",
                                  gate_seconds=report.seconds, as_of=float(times.max()),
                                  gate_window={"start": split.start, "end": split.end},
                                  requested_by="factory model promote")
        self.registry.record_gate(version, record)
        self.events.publish_record(record)
        if not report.passed:
            self.registry.update_status(version, "rejected", "; ".join(report.reasons))
            raise PromotionRefused(f"the gate refused version {version}: "
                                   + "; ".join(report.reasons))
        return record

    def promote(self, version: int, *, force: bool = False,
                reason: str = "promoted by hand") -> SwapReport | None:
        """Serve ``version`` through the gate (unless ``force``), the shadow and the swap;
        ``None`` when it already serves."""
        self.registry.get(version)  # an unknown version fails here, before anything
        if not self.onnx_path(version).exists():
            raise PromotionRefused(f"version {version} has no graph at {self.onnx_path(version)}")
        champion = self.serving()
        if champion == version:
            self.swapper.ensure_serving(version)
            self.registry.set_champion(version, reason)
            return None
        if force:
            record = {"skipped": True, "forced": True, "requested_by": "factory model promote",
                      "at": time.time()}
            self.registry.record_gate(version, record)
            self.events.publish("gate_skipped", version=version, serving=champion,
                                reason=f"--force: {reason}")
            reason = f"forced, gate skipped: {reason}"
        else:
            self.gate(version, champion)
            reason = f"manual: passed the gate: {reason}"
        self._follow_log()
        self.swapper.check_contract(version)
        return self.swapper.swap(champion, version, reason=reason)

    def previous_champion(self) -> int:
        """The champion before the current one, from the registry's history."""
        current = self.serving()
        for change in reversed(self.registry.champion_history()):
            if change["version"] != current:
                return int(change["version"])
        raise PromotionRefused(f"version {current} is the only champion there has been: "
                               "nothing to roll back to")

    def rollback(self, to: int | None = None,
                 reason: str = "rolled back by hand") -> SwapReport:
        """Serve the previous champion (or ``to``) again in place of the current one."""
        current = self.serving()
        good = to if to is not None else self.previous_champion()
        self.registry.get(good)
        if good == current:
            raise PromotionRefused(f"version {good} serves already")
        self.swapper.check_contract(good)
        return self.swapper.roll_back(current, good, reason=reason)
