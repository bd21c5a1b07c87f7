"""The scoring worker's work on one micro-batch, on columns: validate, featurise, score,
emit, log.

The batch arrives as :class:`streams.dataplane.batches.RecordBatch` columns (beneath Faust's
per-event path, ``streams/dataplane/transport.py``); the card windows of every transaction are
computed over the whole batch at once, the terminal features likewise
(``streams/dataplane/scoring_features.py``), the scores go out through the C producer, and
the feature-log rows wait for the worker's checkpoint (``streams/dataplane/checkpoint.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np

from streams.clients.feast_client import OnlineFeatures, open_store
from streams.clients.feast_fast import FastOnlineFeatures, online_features
from streams.clients.router import ROUTE_FIELDS, ModelRouter, Route
from streams.dataplane.batches import RecordBatch
from streams.dataplane.config import WorkerConfig
from streams.dataplane.emit import Emitter
from streams.dataplane.feature_log import FeatureLog
from streams.dataplane.features import CARD_DTYPE, transaction_flags_batch, update_card_history
from streams.dataplane.metrics import WorkerMetrics
from streams.dataplane.scoring import TritonScorer
from streams.dataplane.scoring_features import (
    card_features_of,
    keyed_by_card,
    terminal_features_of,
)
from streams.dataplane.state import ChangelogState
from streams.dataplane.store_marks import StoreMarks, marks_key
from streams.dataplane.watermark import LabelWatermark
from streams.records import encode_scores, parse_transactions
from streams.topics import SCORES

log = logging.getLogger(__name__)


class ScoringPipeline:
    """Everything the scoring agent does with one micro-batch of transactions."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics, emitter: Emitter,
                 state: ChangelogState, consumer: Any = None) -> None:
        self.config = config
        self.metrics = metrics
        self.emitter = emitter
        self.state = state
        self.consumer = consumer
        self.started = asyncio.Event()
        self.features: OnlineFeatures | FastOnlineFeatures | None = None
        self.scorer: TritonScorer | None = None
        self.watermark: LabelWatermark | None = None
        # A strict batch waiting for labels that may never come (the end of a replay):
        # a stopping worker leaves it to its successor rather than wait for ever.
        self.waiting_for_labels = False
        self.feature_log: FeatureLog | None = None
        self.router: ModelRouter | None = None
        self.worker_id = f"{config.app_id}:{os.uname().nodename}:{os.getpid()}"
        self.version = 0
        self.shadow = 0
        self._version_checked = float("-inf")
        self._acked = -1
        self._acked_at = 0.0
        self._one_round_trip = False
        self.marks: StoreMarks | None = None
        # What this worker has seen of the shared state: once the route, or a label
        # mark for every partition, was there, its absence means Redis lost it.
        self._route_seen = False
        self._labels_marked_seen = False

    async def start(self) -> None:
        store = await asyncio.to_thread(open_store, self.config.redis_url)
        self.features = online_features(store, self.config.feast_path)
        self.scorer = TritonScorer(self.config.triton_url,
                                   on_error=lambda exc: self.metrics.triton_errors.inc(),
                                   request_rows=self.config.request_rows,
                                   in_flight=self.config.in_flight,
                                   metrics=self.metrics)
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
        self.marks = StoreMarks(self.router.client, self.config.app_id)
        self.labels_marks_key = marks_key(self.config.watermark_group)
        serves = getattr(self.features, "serves", None)
        self._one_round_trip = serves is not None and serves(self.router.client)
        await self.refresh_version(force=True)
        self.started.set()

    async def refresh_version(self, force: bool = False, route: Route | None = None,
                              read: bool = True) -> None:
        """Follow the router (read once a batch); without a route, the newest READY version.

        The route read for a batch holds for the whole batch, and is acknowledged only once
        the batch before it is done, so a retrainer that sees every worker at a generation
        knows no batch is still on its way to an older version. ``route`` is the route read
        with the batch's other Redis reads (``read=False``: already read).
        """
        assert self.scorer is not None and self.router is not None
        if read:
            route = self.router.route()
        if route is None and self._route_seen:
            route = await self._wait_for_route()
        if route is not None:
            self._route_seen = True
            if (route.serving, route.shadow) != (self.version, self.shadow):
                log.info("routing to model version %d (shadow %d, generation %d)",
                         route.serving, route.shadow, route.generation)
                self.version, self.shadow = route.serving, route.shadow
                self.metrics.model_version.set(self.version)
            now = time.monotonic()
            # A new generation is acknowledged at once; the same one again every second,
            # which keeps this worker among the live ones the retrainer waits for.
            if (route.generation, True) != (self._acked, now - self._acked_at < 1.0):
                self.router.acknowledge(self.worker_id, route.generation)
                self._acked, self._acked_at = route.generation, now
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

    async def _wait_for_route(self) -> Route:
        """The route was there and is gone (a Redis restarted empty): score nothing until
        it is restored from the registry (the serving guard does,
        :mod:`streams.lifecycle.serving_guard`), rather than guess a version."""
        assert self.router is not None
        log.error("the model route is gone from Redis (restarted empty?); scoring waits "
                  "until it is restored from the registry (factory serve's serving guard "
                  "does this)")
        self.metrics.waiting_for_state.labels("route").set(1)
        try:
            while (route := self.router.route()) is None:
                await asyncio.sleep(0.2)
        finally:
            self.metrics.waiting_for_state.labels("route").set(0)
        log.warning("the model route is back (version %d); scoring resumes", route.serving)
        return route

    async def _wait_for_label_state(self, marked: int) -> bool:
        """Once every labels partition was marked as in the online store, fewer marks
        mean the terminal label state is gone (a Redis restarted empty): wait until the
        labels worker has pushed it again, rather than score on a half-empty store.
        Whether it waited (the caller reads the labels again)."""
        partitions = self.config.settings.partitions
        if marked >= partitions:
            self._labels_marked_seen = True
            return False
        if not self._labels_marked_seen:
            return False  # a first start: the labels worker has not marked them yet
        assert self.router is not None
        log.error("the online store lost the terminal label state (%d of %d labels "
                  "partitions marked; Redis restarted empty?); scoring waits until the "
                  "labels worker has pushed it again", marked, partitions)
        self.metrics.waiting_for_state.labels("labels").set(1)
        try:
            while int(self.router.client.hlen(self.labels_marks_key)) < partitions:  # type: ignore[arg-type]  # redis-py types sync replies as Awaitable | T
                await asyncio.sleep(0.2)
        finally:
            self.metrics.waiting_for_state.labels("labels").set(0)
        log.warning("the terminal label state is back in the online store; scoring resumes")
        return True

    def store_missing(self, partitions: list[int]) -> list[int]:
        """Owned partitions whose card state the online store's card view does not hold."""
        assert self.marks is not None
        return self.marks.missing(partitions)

    def restore_store(self, partition: int, table: dict[int, bytes],
                      chunk: int = 2000) -> None:
        """Push the card view of every card of ``partition`` (its windows at its latest
        transaction, computed again from its state: a transaction found in its card's
        history gets the same features), then mark the partition."""
        assert self.features is not None and self.marks is not None
        cards = [c for c, state in table.items() if state]
        for start in range(0, len(cards), chunk):
            part = cards[start:start + chunk]
            last = np.array([np.frombuffer(table[c], dtype=CARD_DTYPE)[-1] for c in part],
                            dtype=CARD_DTYPE)
            rows = []
            for i, card in enumerate(part):
                try:
                    _, row = update_card_history(table[card], float(last["event_time"][i]),
                                                 float(last["amount"][i]),
                                                 int(last["tx_id"][i]))
                except Exception:  # noqa: BLE001 - a state that cannot be replayed
                    log.warning("card %d: its view cannot be computed again; left out", card)
                    continue
                rows.append((card, float(last["event_time"][i]), row))
            if rows:
                self.features.push_card_activity(
                    np.array([r[0] for r in rows], dtype=np.int64),
                    np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))
        self.marks.mark(partition, self.worker_id)
        log.info("transactions partition %d: %d cards pushed to the online store (not "
                 "marked there: a first start, or a store that lost its data)", partition,
                 len(cards))

    async def process(self, batch: RecordBatch) -> None:
        """Validate, featurise, score and emit one micro-batch (outputs produced, not yet
        flushed: the checkpoint flushes them before it commits)."""
        self.metrics.events_in.inc(len(batch))
        self.metrics.batch_size.observe(len(batch))
        if self.consumer is not None:
            self.metrics.observe_lag(self.consumer, batch)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("score batch of %d: %s", len(batch), batch.offset_ranges())
        clock = time.perf_counter()
        parsed = parse_transactions(batch.value)
        for row, error in parsed.errors:
            self.emitter.dead_letter(batch, row, "validate", error)
        rows, columns = keyed_by_card(batch, parsed.rows, parsed.columns, self.emitter)
        if len(rows):
            rows, columns, card_features = card_features_of(batch, rows, columns, self.state,
                                                            self.emitter)
        clock = self.metrics.stage("validate_and_card_features", clock)
        if len(rows):
            await self._score(batch, rows, columns, card_features)

    async def _shadow_scores(self, features: np.ndarray, shadow: int) -> np.ndarray:
        """The shadow's scores, or NaN when it fails: a shadow never holds up the batch."""
        assert self.scorer is not None
        try:
            return await self.scorer.score(features, shadow, attempts=2)
        except Exception as exc:  # noqa: BLE001
            log.warning("shadow version %d failed (%s); its scores are left out", shadow, exc)
            return np.full(len(features), np.nan)

    def _route_and_label_mark(self) -> tuple[Route | None, float | None, int]:
        """The route, the label watermark and the count of labels partitions marked as
        in the store, in one Redis round trip."""
        assert self.router is not None and self.watermark is not None
        pipe = self.router.client.pipeline(transaction=False)
        pipe.hmget(self.router.key, ROUTE_FIELDS)
        pipe.hgetall(self.watermark.key)
        pipe.hlen(self.labels_marks_key)
        route, marks, marked = pipe.execute()
        return self.router.parse_route(route), self.watermark.parse(marks), int(marked)

    async def _wait_for_labels(self, latest_event_time: float, mark: float | None) -> bool:
        """Strict mode: wait until every label known by the batch's last event is applied;
        live mode: export how far the labels are behind. Whether it waited."""
        assert self.watermark is not None
        waited = False
        try:
            while True:
                lag = latest_event_time - mark if mark is not None else float("inf")
                self.metrics.label_staleness.set(max(0.0, lag) if mark is not None else -1)
                if self.config.mode == "live" or (mark is not None
                                                  and mark > latest_event_time):
                    return waited
                if not self.waiting_for_labels:
                    self.waiting_for_labels = True
                    self.metrics.waiting_for_labels.set(1)
                await asyncio.sleep(0.02)
                waited = True
                mark = self.watermark.current()
        finally:
            if self.waiting_for_labels:
                self.waiting_for_labels = False
                self.metrics.waiting_for_labels.set(0)

    async def _score(self, batch: RecordBatch, rows: np.ndarray,
                     columns: dict[str, np.ndarray], card_features: np.ndarray) -> None:
        assert self.features is not None and self.scorer is not None
        assert self.feature_log is not None
        assert self.router is not None and self.watermark is not None
        times = columns["event_time"]
        weekend, night = transaction_flags_batch(times)
        features_in = np.column_stack([columns["amount"], weekend, night, card_features])
        ids = {"tx_id": columns["tx_id"], "event_time": times,
               "card_id": columns["card_id"], "terminal_id": columns["terminal_id"]}
        # The card view gets each card's latest state of this batch.
        card_ids = columns["card_id"]
        _, last = np.unique(card_ids[::-1], return_index=True)
        last = len(card_ids) - 1 - last
        clock = time.perf_counter()
        push = None
        if self._one_round_trip:
            # The card push, the route, the label watermark and the terminals' label
            # arrays: one Redis round trip a batch.
            assert isinstance(self.features, FastOnlineFeatures)  # only it has serves()
            (route_raw, marks, marked), labels = self.features.scoring_round_trip(
                [(b"HMGET", self.router.key, *ROUTE_FIELDS),
                 (b"HGETALL", self.watermark.key), (b"HLEN", self.labels_marks_key)],
                card_ids[last], times[last], card_features[last], columns["terminal_id"])
            route = self.router.parse_route(route_raw)
            mark = self.watermark.parse(dict(zip(marks[::2], marks[1::2], strict=True)))
            clock = self.metrics.stage("redis_round_trip", clock)
            lost = await self._wait_for_label_state(int(marked))
            if lost:
                mark = self.watermark.current()
            if await self._wait_for_labels(float(times.max()), mark) or lost:
                labels = self.features.read_terminal_labels(columns["terminal_id"])
            clock = self.metrics.stage("wait_for_labels", clock)
        else:
            push = asyncio.create_task(asyncio.to_thread(
                self.features.push_card_activity, card_ids[last], times[last],
                card_features[last]))
            route, mark, marked = self._route_and_label_mark()
            if await self._wait_for_label_state(marked):
                mark = self.watermark.current()
            await self._wait_for_labels(float(times.max()), mark)
            clock = self.metrics.stage("wait_for_labels", clock)
            labels = self.features.read_terminal_labels(columns["terminal_id"])
            clock = self.metrics.stage("read_terminal_labels", clock)
        terminal = terminal_features_of(labels, columns["terminal_id"], times)
        features = np.hstack([features_in, terminal])
        clock = self.metrics.stage("terminal_features", clock)
        await self.refresh_version(route=route, read=False)
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
        self.feature_log.append(ids, features, scores, version, shadow_scores, shadow)
        appended = batch.timestamp[rows]
        latency = np.where(appended > 0, np.maximum(0.0, time.time() - appended), 0.0)
        decisions = self.config.policy.decide_many(scores, times)
        records = encode_scores(columns["tx_id"], card_ids, times, scores.astype(np.float64),
                                decisions, version, np.round(latency * 1000, 3))
        self.emitter.produce_many(SCORES, records, [batch.key[r] for r in rows.tolist()])
        observe = self.metrics.end_to_end_latency.observe
        for value in latency.tolist():
            observe(value)
        names, counts = np.unique(np.array(decisions), return_counts=True)
        for decision, count in zip(names.tolist(), counts.tolist(), strict=True):
            self.metrics.decisions.labels(decision).inc(count)
        if shadow:
            self.metrics.shadow_scored.inc(len(rows))
        clock = self.metrics.stage("produce_scores", clock)
        if push is not None:
            await push
            self.metrics.stage("await_feast_push", clock)
        self.metrics.scored.inc(len(rows))

    def cut(self) -> list[Any]:
        """Checkpoint step: the feature-log rows kept since the last checkpoint."""
        assert self.feature_log is not None
        return self.feature_log.take_pending()

    async def persist(self, rows: list[Any]) -> None:
        """Checkpoint step: write the rows of :meth:`cut` (one part an event date)."""
        assert self.feature_log is not None
        if rows:
            clock = time.perf_counter()
            await asyncio.to_thread(self.feature_log.write_pending, rows)
            self.metrics.stage("write_feature_log", clock)

    def discard(self) -> None:
        """A batch failed: forget the rows kept since the last checkpoint."""
        if self.feature_log is not None:
            self.feature_log.discard_pending()
