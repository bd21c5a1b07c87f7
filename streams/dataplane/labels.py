"""The labels worker's work on one micro-batch: terminal label state, pushed to Feast,
then the label watermark."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np

from streams.clients.feast_client import OnlineFeatures, open_store
from streams.clients.feast_fast import FastOnlineFeatures, online_features
from streams.dataplane.batches import RecordBatch
from streams.dataplane.config import WorkerConfig
from streams.dataplane.emit import Emitter
from streams.dataplane.features import TERMINAL_DTYPE, terminal_arrays, update_terminal_history
from streams.dataplane.metrics import WorkerMetrics
from streams.dataplane.state import ChangelogState
from streams.dataplane.store_marks import StoreMarks
from streams.dataplane.terminal_features import terminal_features_batch
from streams.dataplane.terminal_histories import update_terminal_histories
from streams.dataplane.watermark import LabelWatermark
from streams.records import parse_labels

log = logging.getLogger(__name__)


class LabelPipeline:
    """Applies micro-batches of labels to terminal state and publishes it."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics, emitter: Emitter,
                 state: ChangelogState, consumer: Any = None) -> None:
        self.config = config
        self.metrics = metrics
        self.emitter = emitter
        self.state = state
        self.consumer = consumer
        self.started = asyncio.Event()
        self.features: OnlineFeatures | FastOnlineFeatures | None = None
        self.watermark: LabelWatermark | None = None
        self.marks: StoreMarks | None = None
        self._unmarked: set[int] = set()

    async def start(self) -> None:
        store = await asyncio.to_thread(open_store, self.config.redis_url)
        self.features = online_features(store, self.config.feast_path)
        self.watermark = LabelWatermark(self.config.redis_url, self.config.watermark_group,
                                        self.config.settings.partitions)
        self._forget_marks()
        self.marks = StoreMarks(self.watermark.client, self.config.watermark_group)
        self.started.set()

    async def process(self, batch: RecordBatch) -> None:
        """Apply a batch of labels, push the touched terminals to Feast, then advance the
        watermark of the batch's partitions."""
        assert self.features is not None and self.watermark is not None
        self._forget_marks()
        self.metrics.labels_in.inc(len(batch))
        if self.consumer is not None:
            self.metrics.observe_lag(self.consumer, batch)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("labels batch of %d: %s", len(batch), batch.offset_ranges())
        clock = time.perf_counter()
        parsed = parse_labels(batch.value)
        for row, error in parsed.errors:
            self.emitter.dead_letter(batch, row, "validate", error)
        rows, c = parsed.rows, parsed.columns
        if not len(rows):
            return
        partitions = batch.partition[rows]
        index: dict[tuple[int, int], int] = {}
        terminal = np.fromiter(
            (index.setdefault(key, len(index))
             for key in zip(partitions.tolist(), c["terminal_id"].tolist(), strict=True)),
            np.int64, len(rows))
        keys = list(index)
        states = [self.state.get(p, t) for p, t in keys]
        try:
            new_states = update_terminal_histories(states, terminal, c["tx_id"],
                                                   c["event_time"], c["is_fraud"],
                                                   c["known_at"])
        except Exception:  # noqa: BLE001 - find the label that cannot be applied
            new_states = self._apply_one_by_one(batch, rows, c, states, terminal)
        for (p, t), state in zip(keys, new_states, strict=True):
            self.state.put(p, t, state)
        # A terminal's latest known time of this batch (labels of one terminal may sit
        # in several partitions when keyed otherwise; the latest state is pushed).
        latest = np.full(len(keys), -np.inf)
        np.maximum.at(latest, terminal, c["known_at"])
        clock = self.metrics.stage("apply_labels", clock)
        await asyncio.to_thread(self._push, keys, new_states, latest)
        clock = self.metrics.stage("push_terminal_state", clock)
        for p in np.unique(partitions).tolist():
            known_at = float(c["known_at"][partitions == p].max())
            self.watermark.advance(p, known_at)
            self.metrics.label_watermark.labels(str(p)).set(known_at)
        self.metrics.stage("advance_watermark", clock)

    def _apply_one_by_one(self, batch: RecordBatch, rows: np.ndarray,
                          c: dict[str, np.ndarray], states: list[bytes],
                          terminal: np.ndarray) -> list[bytes]:
        states = list(states)
        for i, row in enumerate(rows.tolist()):
            k = int(terminal[i])
            try:
                states[k] = update_terminal_history(
                    states[k], int(c["tx_id"][i]), float(c["event_time"][i]),
                    int(c["is_fraud"][i]), float(c["known_at"][i]))
            except Exception as exc:  # noqa: BLE001 - a poison label must not stop the worker
                self.emitter.dead_letter(batch, row, "features", exc)
        return states

    def _push(self, keys: list[tuple[int, int]], states: list[bytes],
              latest: np.ndarray) -> None:
        assert self.features is not None
        arrays = [terminal_arrays(state) for state in states]
        values = terminal_features_batch(arrays, np.arange(len(keys)), latest)
        if self.config.feast_path == "sdk":
            arrays = [(t.tolist(), k.tolist(), f.tolist()) for t, k, f in arrays]
        self.features.push_terminal_risk(np.array([t for _, t in keys]), latest, values,
                                         arrays)

    def assigned(self, partitions: list[int]) -> None:
        """Partitions this worker now owns: their watermark marks are forgotten before any
        of them is advanced again (:meth:`_forget_marks`).

        The new owner replays labels since the last commit and pushes terminal state
        rebuilt from its changelog, so for a while the online store may hold less than
        the old mark promised; without its mark, a strict scorer waits. Only the owned
        partitions: the other workers of the group keep their marks (forgetting the
        whole group's marks would leave a quiet partition of another worker unmarked
        until its next label)."""
        self._unmarked.update(partitions)

    def _forget_marks(self) -> None:
        """Forget the marks of the partitions assigned since the last call (in Redis;
        raises when Redis cannot be reached, and the caller's batch is handled again)."""
        if self.watermark is None or not self._unmarked:
            return
        partitions = sorted(self._unmarked)
        self.watermark.forget(partitions)
        self._unmarked.difference_update(partitions)

    def caught_up(self, partition: int, table: dict[int, bytes]) -> None:
        """Every label of ``partition`` in Kafka is applied (and was pushed to Feast): its
        watermark is the latest known time in its terminals' state.

        A partition's mark is forgotten when it is assigned (a replay can move Feast back
        for a while, :meth:`assigned`); a partition with nothing to replay, or with no new
        label, would otherwise never be marked again and a strict scorer would wait for
        ever.
        """
        assert self.watermark is not None
        self._forget_marks()
        if not table:
            return
        known = np.frombuffer(b"".join(table.values()), dtype=TERMINAL_DTYPE)["known_at"]
        if len(known):
            latest = float(known.max())
            self.watermark.advance(partition, latest)
            self.metrics.label_watermark.labels(str(partition)).set(latest)
            log.info("labels partition %d caught up; watermark %.0f", partition, latest)

    def store_missing(self, partitions: list[int]) -> list[int]:
        """Owned partitions whose terminal state the online store does not hold (a Redis
        restarted empty, or this group's first start)."""
        assert self.marks is not None
        return self.marks.missing(partitions)

    def restore_store(self, partition: int, table: dict[int, bytes],
                      chunk: int = 2000) -> None:
        """Push every terminal of ``partition`` to Feast, advance its watermark to the
        latest known time in the table, then mark it (:mod:`streams.dataplane.store_marks`)."""
        assert self.watermark is not None and self.marks is not None
        self._forget_marks()
        terminals = [t for t, state in table.items() if state]
        latest_known = -np.inf
        for start in range(0, len(terminals), chunk):
            part = terminals[start:start + chunk]
            states = [table[t] for t in part]
            latest = np.array([float(np.frombuffer(state, dtype=TERMINAL_DTYPE)["known_at"].max())
                               for state in states])
            self._push([(partition, t) for t in part], states, latest)
            latest_known = max(latest_known, float(latest.max()))
        if np.isfinite(latest_known):
            self.watermark.advance(partition, latest_known)
            self.metrics.label_watermark.labels(str(partition)).set(latest_known)
        self.marks.mark(partition, f"{self.config.app_id} pid {os.getpid()}")
        log.info("labels partition %d: %d terminals pushed to the online store (its copy "
                 "was missing)", partition, len(terminals))

    def cut(self) -> None:
        """Nothing is kept for a checkpoint besides the changelog."""

    async def persist(self, rows: None) -> None:
        """Nothing to write at a checkpoint besides the changelog."""

    def discard(self) -> None:
        """Nothing kept between batches."""
