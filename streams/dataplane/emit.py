"""The worker's output producer: scores, dead letters and state changelogs, flushed at
each checkpoint before the source offsets are committed."""

from __future__ import annotations

import asyncio

from confluent_kafka import Producer

from streams.dataplane.batches import RecordBatch
from streams.dataplane.deadletter import dead_letter_headers
from streams.dataplane.metrics import WorkerMetrics
from streams.settings import Settings
from streams.topics import TRANSACTIONS_DLQ


class Emitter:
    """An idempotent confluent-kafka producer shared by a worker's pipelines.

    A micro-batch's records are queued in one call, so ``linger.ms`` 1 is enough for them
    to leave in a few large requests, and holds a score back from its readers 1 ms at
    most; lz4 makes the state changelog records (a card's whole window) cheap for the
    broker.
    """

    def __init__(self, kafka: str, settings: Settings, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.producer = Producer({
            **settings.kafka.client_config(kafka),
            "linger.ms": 1,
            "enable.idempotence": True,
            "compression.type": "lz4",
            "message.max.bytes": 2 * 1024 * 1024,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        })

    def produce(self, topic: str, value: bytes | None, key: bytes | None,
                partition: int = -1) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, partition=partition)
                return
            except BufferError:
                self.producer.poll(0.01)

    def produce_many(self, topic: str, values: list[bytes], keys: list[bytes | None]) -> None:
        """Produce one record a value, keyed; serves the delivery reports once."""
        produce = self.producer.produce
        for value, key in zip(values, keys, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:
                self.produce(topic, value, key)
        self.producer.poll(0)

    def changelog(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        """A state changelog record, in the partition of the source events that wrote it."""
        self.produce(topic, value, key, partition)

    def dead_letter(self, batch: RecordBatch, row: int, stage: str,
                    error: BaseException) -> None:
        """Send the record's original key and bytes to the dead-letter topic with the
        reason."""
        self.producer.produce(
            TRANSACTIONS_DLQ,
            value=batch.value[row],
            key=batch.key[row],
            headers=dead_letter_headers(batch.topic, int(batch.partition[row]),  # type: ignore[arg-type]  # confluent-kafka's header list is invariant (str | bytes | None)
                                        int(batch.offset[row]), stage, error),
        )
        self.metrics.dead_lettered.labels(getattr(error, "kind", type(error).__name__)).inc()

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until Kafka acknowledged everything produced so far."""
        self.producer.poll(0)
        remaining = await asyncio.to_thread(self.producer.flush, timeout_s)
        if remaining:
            raise RuntimeError(f"{remaining} messages not acknowledged by Kafka in {timeout_s} s")
