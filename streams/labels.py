"""The labels agent's work: terminal label state, pushed to Feast, then the watermark."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import faust
import numpy as np

from streams.changelog import ChangelogBarrier, log_batch, write_as
from streams.emit import Emitter
from streams.feast_client import OnlineFeatures, online_features, open_store
from streams.features import terminal_arrays, terminal_window_features, update_terminal_history
from streams.metrics import WorkerMetrics
from streams.records import Label, ValidationError
from streams.watermark import LabelWatermark

if TYPE_CHECKING:
    from streams.app import WorkerConfig


class LabelPipeline:
    """Applies micro-batches of labels to terminal state and publishes it."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.emitter = Emitter(config.kafka, config.settings, metrics)
        self.started = asyncio.Event()
        self.features: OnlineFeatures | None = None
        self.watermark: LabelWatermark | None = None

    async def start(self) -> None:
        store = await asyncio.to_thread(open_store, self.config.redis_url)
        self.features = online_features(store, self.config.feast_path)
        self.watermark = LabelWatermark(self.config.redis_url, self.config.watermark_group,
                                        self.config.settings.partitions)
        self.watermark.reset()
        self.started.set()

    async def process(self, stream: faust.Stream, events: list[faust.types.EventT],
                      table: faust.Table, changelog: ChangelogBarrier) -> None:
        assert self.features is not None and self.watermark is not None
        self.metrics.labels_in.inc(len(events))
        self.metrics.observe_lag(stream, events)
        log_batch("labels", events)
        clock = time.perf_counter()
        touched: dict[str, bytes] = {}
        latest: dict[str, float] = {}
        marks: dict[int, float] = {}
        for event in events:
            try:
                label = Label.parse(event.message.value)
            except ValidationError as exc:
                self.emitter.dead_letter(event, "validate", exc)
                continue
            key = str(label.terminal_id)
            state = update_terminal_history(touched[key] if key in touched else table[key],
                                            label.tx_id, label.event_time, label.is_fraud,
                                            label.known_at)
            # Every label writes its terminal's state, in the partition of that label.
            write_as(event)
            table[key] = state
            touched[key] = state
            latest[key] = max(latest.get(key, 0.0), label.known_at)
            partition = event.message.partition
            marks[partition] = max(marks.get(partition, 0.0), label.known_at)
        clock = self.metrics.stage("apply_labels", clock)
        # The changelog holds this batch's state before Feast or the watermark reflect
        # it, and before the batch's offsets can be committed (streams/changelog.py).
        await changelog.wait(stream.app.producer)
        clock = self.metrics.stage("flush_changelog", clock)
        if touched:
            await asyncio.to_thread(self._push, touched, latest)
        clock = self.metrics.stage("push_terminal_state", clock)
        await self.emitter.flush()
        self.metrics.stage("flush", clock)
        for partition, known_at in marks.items():
            self.watermark.advance(partition, known_at)
            self.metrics.label_watermark.labels(str(partition)).set(known_at)


    def _push(self, touched: dict[str, bytes], latest: dict[str, float]) -> None:
        assert self.features is not None
        keys = list(touched)
        arrays = [terminal_arrays(touched[k]) for k in keys]
        values = [terminal_window_features(*a, latest[k])
                  for k, a in zip(keys, arrays, strict=True)]
        self.features.push_terminal_risk(
            np.array([int(k) for k in keys]), np.array([latest[k] for k in keys]),
            np.array(values), [(t.tolist(), k.tolist(), f.tolist()) for t, k, f in arrays],
        )
