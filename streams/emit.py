"""The worker's output producer: scores and dead letters, flushed before acknowledging."""

from __future__ import annotations

import asyncio

import faust
from confluent_kafka import Producer

from streams.deadletter import dead_letter_headers
from streams.metrics import WorkerMetrics
from streams.settings import Settings
from streams.topics import TRANSACTIONS_DLQ


class Emitter:
    """An idempotent confluent-kafka producer shared by a worker's pipelines."""

    def __init__(self, kafka: str, settings: Settings, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.producer = Producer({
            **settings.kafka.client_config(kafka),
            "linger.ms": 5,
            "enable.idempotence": True,
            "message.max.bytes": 2 * 1024 * 1024,
        })

    def produce(self, topic: str, value: bytes, key: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key)
                return
            except BufferError:
                self.producer.poll(0.01)

    def dead_letter(self, event: faust.types.EventT, stage: str, error: BaseException) -> None:
        """Send the event's original bytes to the dead-letter topic with the reason."""
        message = event.message
        self.producer.produce(
            TRANSACTIONS_DLQ,
            value=message.value,
            key=message.key,
            headers=dead_letter_headers(message.topic, message.partition, message.offset,
                                        stage, error),
        )
        self.metrics.dead_lettered.labels(getattr(error, "kind", type(error).__name__)).inc()

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until Kafka acknowledged everything produced so far."""
        self.producer.poll(0)
        remaining = await asyncio.to_thread(self.producer.flush, timeout_s)
        if remaining:
            raise RuntimeError(f"{remaining} messages not acknowledged by Kafka in {timeout_s} s")
