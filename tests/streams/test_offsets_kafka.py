"""The worker's hole filling against a real Kafka broker: the records read directly are
the ones at those offsets, in order, shaped as the pipelines read them."""

from __future__ import annotations

import asyncio
import uuid

import faust
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streams.app import WorkerConfig, source_offsets
from streams.clients import produce

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
    app = faust.App(config.app_id, broker=f"kafka://{kafka}", web_enabled=False)
    offsets = source_offsets(app, config, topic)

    async def scenario() -> list[int | None]:
        filled = await offsets._fill(0, 3, 9)
        assert [e.message.offset for e in filled] == list(range(3, 9))
        assert [e.message.value for e in filled] == [f"v{i}".encode() for i in range(3, 9)]
        assert [e.message.key for e in filled] == [f"k{i}".encode() for i in range(3, 9)]
        first = filled[0].message
        assert (first.topic, first.partition, first.tp.partition) == (topic, 0, 0)
        assert first.timestamp > 1e9  # seconds since the epoch, as Faust gives them
        # the group never committed and reads from the earliest: the first offset
        starts = await offsets._committed([0])
        return [starts[0]]

    assert asyncio.run(scenario()) == [0]
