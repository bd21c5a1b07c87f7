"""The end-to-end benchmarks' rig: the paced transaction feed, the read-back and the counters.

:class:`Feed` produces a dataset's transactions in order with each label once the event
clock passes its ``known_at``, as fast as possible or at a steady rate; :func:`read_back`
reads each transaction's or score's Kafka timestamp; the rest read the scoring worker's
counters and turn CPU readings into per-phase and per-event figures. Used by
:mod:`bench.e2e` and :mod:`bench.scaling`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import confluent_kafka
import numpy as np
from confluent_kafka import Consumer, TopicPartition

from bench.common import log
from streams.clients.kafka_io import producer, topic_end_offsets
from streams.dataplane.worker import WorkerProcess
from streams.replay.dataset import Dataset, LabelSchedule
from streams.settings import Settings
from streams.topics import LABELS, TRANSACTIONS

CHUNK = 20_000


class Feed:
    """Transactions of one dataset in order, each label once the event clock reaches it."""

    def __init__(self, dataset: Dataset, bootstrap: str, settings: Settings) -> None:
        self.dataset = dataset
        assert dataset.is_fraud is not None
        self.schedule = LabelSchedule.build(dataset.event_time, dataset.delay_s)
        self.next_row = self.label_pos = self.labels_sent = 0
        self.client = producer(bootstrap, settings, **{
            "linger.ms": 5, "enable.idempotence": True,
            "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 1_048_576,
        })

    def send_raw(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        """Produce encoded messages as they are (the schedule is not moved)."""
        self._send(topic, keys, values)

    def _send(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        produce = self.client.produce
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    self.client.poll(0.01)
        self.client.poll(0)

    def send(self, end: int) -> None:
        """Produce transactions ``next_row..end-1`` and the labels due by the last one."""
        if end <= self.next_row:
            return
        self._send(TRANSACTIONS, *self.dataset.encode_transactions(self.next_row, end))
        self.next_row = end
        clock = int(self.dataset.event_time[end - 1])
        label_end = self.schedule.due_end(self.label_pos, clock, end)
        if label_end > self.label_pos:
            rows = self.schedule.rows[self.label_pos:label_end]
            self._send(LABELS, *self.dataset.encode_labels(rows))
            self.labels_sent += label_end - self.label_pos
            self.label_pos = label_end

    def flush(self) -> None:
        if self.client.flush(120) != 0:
            raise RuntimeError("Kafka did not acknowledge every message within 120 s")

    def prefill(self, end: int) -> float:
        """Rows up to ``end`` as fast as possible; returns the seconds it took."""
        began = time.monotonic()
        for start in range(self.next_row, end, CHUNK):
            self.send(min(end, start + CHUNK))
            log(f"  pre-fill: {self.next_row:,} of {end:,} transactions, "
                f"{self.labels_sent:,} labels")
        self.flush()
        return time.monotonic() - began

    def paced(self, end: int, rate: float) -> float:
        """Rows up to ``end`` at ``rate`` a second, evenly spaced; returns the seconds."""
        start, began = self.next_row, time.monotonic()
        shown = began
        while self.next_row < end:
            now = time.monotonic()
            due = min(end, start + int((now - began) * rate) + 1)
            if due > self.next_row:
                self.send(due)
            else:
                self.client.poll(0)
                time.sleep(min(0.002, max(0.0, (self.next_row - start) / rate - (now - began))))
            if now - shown > 5:
                shown = now
                log(f"  paced: {self.next_row - start:,} of {end - start:,} at "
                    f"{(self.next_row - start) / (now - began):,.0f}/s")
        wall = time.monotonic() - began
        self.flush()
        return wall


def read_back(bootstrap: str, settings: Settings, topic: str, start: dict[int, int],
              wanted: int, timeout_s: float = 300.0) -> dict[int, tuple[int, float]]:
    """The first ``(kafka timestamp ms, latency_ms or nan)`` of each tx_id from ``start``.

    Reads until ``wanted`` distinct tx_ids are seen (or the topic's end at the call).
    """
    end = topic_end_offsets(bootstrap, settings, topic)
    consumer = Consumer({**settings.kafka.client_config(bootstrap),
                         "group.id": f"bench-e2e-{topic}-{time.monotonic_ns()}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    remaining = sum(end[p] - o for p, o in start.items())
    seen: dict[int, tuple[int, float]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while remaining > 0 and len(seen) < wanted and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if message.error():
                    continue
                remaining -= 1
                kind, stamp = message.timestamp()
                if kind != confluent_kafka.TIMESTAMP_CREATE_TIME:
                    raise RuntimeError(f"{topic}: timestamps are not CreateTime ({kind})")
                value = json.loads(message.value())
                seen.setdefault(value["tx_id"], (stamp, value.get("latency_ms", np.nan)))
    finally:
        consumer.close()
    return seen


def wait_scored(workers: list[WorkerProcess], scorer: WorkerProcess, total: int,
                timeout_s: float, logs: Path) -> None:
    """Wait until the scoring worker's counter reaches ``total`` (cheap: no consumer)."""
    deadline = time.monotonic() + timeout_s
    shown = 0.0
    while True:
        if not all(w.alive() for w in workers):
            raise SystemExit(f"a worker stopped; see {logs}/*-worker.log")
        scored = scorer.metrics().get("factory_events_scored_total", 0.0)
        if scored >= total:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {scored:,.0f} of {total:,} scored in {timeout_s:.0f} s")
        if time.monotonic() - shown > 5:
            shown = time.monotonic()
            log(f"  {scored:,.0f} of {total:,} scored")
        time.sleep(0.5)


def batch_counts(scorer: WorkerProcess) -> tuple[int, float]:
    """Micro-batches the scoring worker has read so far, and the events in them."""
    samples = scorer.metrics()
    return (int(samples.get("factory_batch_size_count", 0)),
            samples.get("factory_batch_size_sum", 0.0))


def percentiles(values: np.ndarray) -> dict[str, float]:
    points = {"p50": 50, "p90": 90, "p99": 99, "p99_9": 99.9, "max": 100}
    return {k: round(float(np.percentile(values, q)), 2) for k, q in points.items()} | {
        "mean": round(float(values.mean()), 2)}


def cpu(after: dict[str, float | None], before: dict[str, float | None]) -> dict:
    """CPU seconds of each process (group) between two readings."""
    return {k: round(v - (before.get(k) or 0.0), 2) if v is not None else None
            for k, v in after.items()}


def per_event(cpu_s: dict[str, float | None], events: int) -> dict[str, float]:
    """CPU microseconds an event of each process, and of all of them."""
    known = {k: v for k, v in cpu_s.items() if v is not None}
    figures = {k: round(v / events * 1e6, 1) for k, v in known.items()} if events else {}
    if events:
        figures["all processes"] = round(sum(known.values()) / events * 1e6, 1)
    return figures


def phase_stages(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items()}
