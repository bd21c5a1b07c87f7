"""The worker's keyed state: staged writes, one changelog record a changed key a
checkpoint, and a restore from the changelog that gives the same state back."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.dataplane.state import ChangelogState, changelog_topic, ensure_changelog


def test_a_checkpoint_produces_one_record_a_changed_key_in_its_partition() -> None:
    state = ChangelogState("cl", {})
    for p in (0, 1):
        state.partitions[p] = {}
    state.put(0, 7, b"a")
    state.put(0, 7, b"ab")  # the same key twice: one record, the latest value
    state.put(1, 9, b"x")
    sent: list[tuple[str, bytes, bytes | None, int]] = []
    assert state.checkpoint(lambda *record: sent.append(record)) == 2
    assert sorted(sent) == [("cl", b"7", b"ab", 0), ("cl", b"9", b"x", 1)]
    assert state.checkpoint(lambda *record: sent.append(record)) == 0  # nothing changed
    assert state.get(0, 7) == b"ab" and state.get(0, 8) == b""


def test_discarded_partitions_forget_their_staged_and_held_state() -> None:
    state = ChangelogState("cl", {})
    state.partitions[0] = {1: b"old"}
    state.partitions[1] = {2: b"kept"}
    state.put(0, 1, b"new")
    state.put(1, 2, b"kept2")
    state.discard_staged([0])
    assert not state.owns(0) and state.owns(1)
    sent: list[tuple[str, bytes, bytes | None, int]] = []
    state.checkpoint(lambda *record: sent.append(record))
    assert sent == [("cl", b"2", b"kept2", 1)]


@pytest.mark.integration
def test_a_restore_reads_the_latest_value_of_every_key_of_its_partitions(live_stack) -> None:  # noqa: ANN001,E501
    settings, kafka = live_stack.settings, live_stack.endpoints.kafka
    config = settings.kafka.client_config(kafka)
    topic = changelog_topic(f"state-{uuid.uuid4().hex[:8]}", "card-state")
    ensure_changelog(config, topic, 3)
    ensure_changelog(config, topic, 3)  # twice is harmless
    with pytest.raises(RuntimeError, match="partitions"):
        ensure_changelog(config, topic, 4)
    plain = changelog_topic(f"state-{uuid.uuid4().hex[:8]}", "card-state")
    admin = AdminClient(config)
    admin.create_topics([NewTopic(plain, 3, 1)])[plain].result(timeout=30)
    with pytest.raises(RuntimeError, match="not compacted"):
        ensure_changelog(config, plain, 3)
    writer = ChangelogState(topic, config)
    for p in range(3):
        writer.partitions[p] = {}
    producer = Producer({**config, "enable.idempotence": True, "compression.type": "lz4"})

    def produce(topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        producer.produce(topic, value, key, partition=partition)

    for round_ in range(5):  # five checkpoints, each key rewritten
        for key in range(200):
            writer.put(key % 3, key, b"%d-%d" % (key, round_) * 50)
        writer.checkpoint(produce)
        assert producer.flush(30) == 0
    writer.put(1, 1, b"")  # a key emptied
    writer.checkpoint(produce)
    assert producer.flush(30) == 0

    reader = ChangelogState(topic, config)
    reader.restore([0, 2])
    assert reader.partitions == {0: writer.partitions[0], 2: writer.partitions[2]}
    assert reader.restored_records == 5 * (67 + 66)
    reader.restore([1, 2])  # only the partition not held yet is read
    assert reader.partitions[1] == writer.partitions[1] and reader.get(1, 1) == b""
    # every record is in the partition of its key's source partition
    consumer = Consumer({**config, "group.id": "x", "enable.auto.commit": False})
    try:
        for p in range(3):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            assert high - low == 5 * len(writer.partitions[p]) + (p == 1)
    finally:
        consumer.close()
