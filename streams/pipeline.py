"""The scoring agent's work on one micro-batch: validate, featurise, score, emit, log."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

import faust
import numpy as np

from streams.changelog import ChangelogBarrier, log_batch, write_as
from streams.emit import Emitter
from streams.feast_client import OnlineFeatures, online_features, open_store
from streams.feature_log import FeatureLog
from streams.features import terminal_window_features, transaction_flags, update_card_history
from streams.metrics import WorkerMetrics
from streams.records import Score, Transaction, ValidationError
from streams.router import ModelRouter
from streams.scoring import TritonScorer
from streams.topics import SCORES
from streams.watermark import LabelWatermark

if TYPE_CHECKING:
    from streams.app import WorkerConfig

log = logging.getLogger(__name__)


class ScoringPipeline:
    """Everything the scoring agent does with one micro-batch of transactions."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.emitter = Emitter(config.kafka, config.settings, metrics)
        self.started = asyncio.Event()
        self.features: OnlineFeatures | None = None
        self.scorer: TritonScorer | None = None
        self.watermark: LabelWatermark | None = None
        self.feature_log: FeatureLog | None = None
        self.router: ModelRouter | None = None
        self.worker_id = f"{config.app_id}:{os.uname().nodename}:{os.getpid()}"
        self.version = 0
        self.shadow = 0
        self._version_checked = 0.0

    async def start(self) -> None:
        store = await asyncio.to_thread(open_store, self.config.redis_url)
        self.features = online_features(store, self.config.feast_path)
        self.scorer = TritonScorer(self.config.triton_url,
                                   on_error=lambda exc: self.metrics.triton_errors.inc(),
                                   request_rows=self.config.request_rows,
                                   in_flight=self.config.in_flight)
        await self.scorer.connect()
        if self.scorer.n_features != len(self.features.order):
            raise RuntimeError(
                f"Triton model takes {self.scorer.n_features} features but the feature "
                f"service gives {len(self.features.order)}: {self.features.order}"
            )
        self.watermark = LabelWatermark(self.config.redis_url, self.config.watermark_group,
                                        self.config.settings.partitions)
        self.feature_log = FeatureLog(self.config.log_dir, self.features.order)
        self.router = ModelRouter(self.config.redis_url)
        await self.refresh_version(force=True)
        self.started.set()

    async def refresh_version(self, force: bool = False) -> None:
        """Follow the router (read once a batch); without a route, the newest READY version.

        The route read here holds for the whole batch, and is acknowledged only once the
        batch before it is done, so a retrainer that sees every worker at a generation
        knows no batch is still on its way to an older version.
        """
        assert self.scorer is not None and self.router is not None
        route = await asyncio.to_thread(self.router.route)
        if route is not None:
            if (route.serving, route.shadow) != (self.version, self.shadow):
                log.info("routing to model version %d (shadow %d, generation %d)",
                         route.serving, route.shadow, route.generation)
                self.version, self.shadow = route.serving, route.shadow
                self.metrics.model_version.set(self.version)
            await asyncio.to_thread(self.router.acknowledge, self.worker_id, route.generation)
            return
        now = time.monotonic()
        if not force and now - self._version_checked < self.config.version_refresh_s:
            return
        self._version_checked = now
        while True:
            versions = await self.scorer.ready_versions()
            if versions:
                break
            log.warning("no READY version of the model yet; waiting")
            await asyncio.sleep(1.0)
        if versions[-1] != self.version:
            log.info("routing to model version %d", versions[-1])
            self.version = versions[-1]
            self.shadow = 0
            self.metrics.model_version.set(self.version)

    async def process(self, stream: faust.Stream, events: list[faust.types.EventT],
                      card_history: faust.Table, changelog: ChangelogBarrier) -> None:
        """Validate, featurise, score and emit one micro-batch, then flush the outputs."""
        self.metrics.events_in.inc(len(events))
        self.metrics.observe_lag(stream, events)
        self.metrics.batch_size.observe(len(events))
        log_batch("score", events)
        clock = time.perf_counter()
        accepted: list[tuple[Transaction, faust.types.EventT]] = []
        rows: list[list[float]] = []
        # Every event writes its card's state in the partition of that event: writing
        # a card once a batch lost state in Faust's recovery after a kill -9.
        states: dict[str, bytes] = {}
        for event in events:
            try:
                tx = Transaction.parse(event.message.value)
            except ValidationError as exc:
                self.emitter.dead_letter(event, "validate", exc)
                continue
            key = str(tx.card_id)
            try:
                state = states[key] if key in states else card_history[key]
                state, card_features = update_card_history(
                    state, tx.event_time, tx.amount, tx.tx_id
                )
                write_as(event)
                card_history[key] = state
            except Exception as exc:  # noqa: BLE001 - a poison event must not stop the worker
                self.emitter.dead_letter(event, "features", exc)
                continue
            states[key] = state
            weekend, night = transaction_flags(tx.event_time)
            rows.append([tx.amount, weekend, night, *card_features])
            accepted.append((tx, event))
        clock = self.metrics.stage("validate_and_card_features", clock)
        # The card state of this batch is in the changelog before any of its offsets
        # can be committed (streams/changelog.py says why Faust's flush is not enough).
        await changelog.wait(stream.app.producer)
        self.metrics.stage("flush_changelog", clock)
        if accepted:
            await self._score(accepted, np.asarray(rows, dtype=np.float64))
        clock = time.perf_counter()
        await self.emitter.flush()
        self.metrics.stage("flush", clock)


    async def _shadow_scores(self, features: np.ndarray, shadow: int) -> np.ndarray:
        """The shadow's scores, or NaN when it fails: a shadow never holds up the batch."""
        assert self.scorer is not None
        try:
            return await self.scorer.score(features, shadow, attempts=2)
        except Exception as exc:  # noqa: BLE001
            log.warning("shadow version %d failed (%s); its scores are left out", shadow, exc)
            return np.full(len(features), np.nan)

    async def _wait_for_labels(self, latest_event_time: float) -> None:
        """Strict mode: wait until every label known by the batch's last event is applied."""
        assert self.watermark is not None
        while True:
            mark = await asyncio.to_thread(self.watermark.current)
            lag = latest_event_time - mark if mark is not None else float("inf")
            self.metrics.label_staleness.set(max(0.0, lag) if mark is not None else -1)
            if self.config.mode == "live" or (mark is not None and mark > latest_event_time):
                return
            await asyncio.sleep(0.02)

    async def _score(self, accepted: list[tuple[Transaction, faust.types.EventT]],
                     rows: np.ndarray) -> None:
        assert self.features is not None and self.scorer is not None
        assert self.feature_log is not None
        ids = {
            "tx_id": np.array([tx.tx_id for tx, _ in accepted], dtype=np.int64),
            "event_time": np.array([tx.event_time for tx, _ in accepted], dtype=np.float64),
            "card_id": np.array([tx.card_id for tx, _ in accepted], dtype=np.int64),
            "terminal_id": np.array([tx.terminal_id for tx, _ in accepted], dtype=np.int64),
        }
        times = ids["event_time"]
        # The card view gets each card's latest state of this batch.
        card_ids = ids["card_id"]
        _, last = np.unique(card_ids[::-1], return_index=True)
        last = len(card_ids) - 1 - last
        push = asyncio.create_task(asyncio.to_thread(
            self.features.push_card_activity, card_ids[last], times[last], rows[last, 3:]
        ))
        clock = time.perf_counter()
        await self._wait_for_labels(float(times.max()))
        clock = self.metrics.stage("wait_for_labels", clock)
        labels = await asyncio.to_thread(self.features.read_terminal_labels, ids["terminal_id"])
        clock = self.metrics.stage("read_terminal_labels", clock)
        terminal = np.array([
            terminal_window_features(*labels[int(terminal_id)], t)
            for terminal_id, t in zip(ids["terminal_id"].tolist(), times.tolist(), strict=True)
        ])
        features = np.hstack([rows, terminal])
        clock = self.metrics.stage("terminal_features", clock)
        await self.refresh_version()
        version, shadow = self.version, self.shadow
        started = time.perf_counter()
        if shadow:
            # The shadow scores the same batch beside the serving version; they are
            # logged, never used for decisions.
            scores, shadow_scores = await asyncio.gather(
                self.scorer.score(features, version), self._shadow_scores(features, shadow))
        else:
            scores, shadow_scores = await self.scorer.score(features, version), None
        self.metrics.scoring_latency.observe(time.perf_counter() - started)
        clock = self.metrics.stage("triton", clock)
        logged = asyncio.to_thread(self.feature_log.write, ids, features, scores, version,
                                   shadow_scores, shadow)
        now = time.time()
        policy = self.config.policy
        decisions: dict[str, int] = {}
        for (tx, event), score in zip(accepted, scores.tolist(), strict=True):
            appended = event.message.timestamp
            latency = max(0.0, now - appended) if appended else 0.0
            decision = policy.decide(score, tx.event_time)
            decisions[decision] = decisions.get(decision, 0) + 1
            record = Score(tx.tx_id, tx.card_id, tx.event_time, float(score), decision,
                           version, round(latency * 1000, 3))
            self.emitter.produce(SCORES, record.to_json(), event.message.key)
            self.metrics.end_to_end_latency.observe(latency)
        for decision, count in decisions.items():
            self.metrics.decisions.labels(decision).inc(count)
        if shadow:
            self.metrics.shadow_scored.inc(len(accepted))
        clock = self.metrics.stage("produce_scores", clock)
        await asyncio.gather(push, logged)
        self.metrics.stage("await_feast_push_and_log", clock)
        self.metrics.scored.inc(len(accepted))
