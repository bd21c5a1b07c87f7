"""The worker's hole filling against a real Kafka broker: the records read directly are
the ones at those offsets, in order, as the columns the pipelines read."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streams.clients.kafka_io import produce
from streams.dataplane.app import FactoryApp, source_offsets
from streams.dataplane.config import WorkerConfig

pytestmark = pytest.mark.integration


def test_a_hole_is_read_from_kafka_record_for_record(live_stack) -> None:  # noqa: ANN001
    settings, kafka = live_stack.settings, live_stack.endpoints.kafka
    topic = f"fill-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings.kafka.client_config(kafka))
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic] \
        .result(timeout=30)
    produce(kafka, settings, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(12)],
            topic=topic)
    config = WorkerConfig(kafka=kafka, redis_url=live_stack.endpoints.redis,
                          triton_url=live_stack.endpoints.triton, settings=settings,
                          app_id=f"fill-{uuid.uuid4().hex[:8]}", role="labels")
    # A bare app: the read and the committed offsets do not go through its consumer.
    app = FactoryApp(config.app_id, broker=f"batching://{kafka}", web_enabled=False)
    offsets = source_offsets(app, config, topic)

    async def scenario() -> list[int | None]:
        filled = await offsets._fill(0, 3, 9)
        assert filled.offset.tolist() == list(range(3, 9))
        assert filled.value == [f"v{i}".encode() for i in range(3, 9)]
        assert filled.key == [f"k{i}".encode() for i in range(3, 9)]
        assert filled.topic == topic and set(filled.partition.tolist()) == {0}
        assert (filled.timestamp > 1e9).all()  # seconds since the epoch
        # the group never committed and reads from the earliest: the first offset
        starts = await offsets._committed([0])
        return [starts[0]]

    assert asyncio.run(scenario()) == [0]
