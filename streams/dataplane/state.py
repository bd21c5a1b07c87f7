"""Keyed state of a worker's source partitions, backed by a compacted changelog topic.

The way stream processors built for throughput keep state (Kafka Streams' record cache
over its changelogged store, Quix Streams' checkpoint): a batch writes its keys into the
partition's in-memory map and stages them; at the checkpoint, one changelog record a
changed key goes out through the worker's confluent-kafka producer (batched,
compressed), the producer is flushed once together with the scores and dead letters,
and only then are the source offsets committed. When a partition is assigned, its state
is restored from the changelog before its first batch.

Changelog records are ``key -> the whole value`` in the partition of the source event
(keys of a source partition stay in it), so the compacted topic holds the latest value of
every key. Records written after the last committed source offset (a worker killed
between its flush and its commit) are applied on restore, not skipped: the card and
terminal states are idempotent in ``tx_id``, so the redelivered events find themselves
and get the features they had, and skipping would lose the key's state altogether once
compaction has removed its older records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

log = logging.getLogger(__name__)

Produce = Callable[[str, bytes, bytes | None, int], None]
"""``produce(topic, key, value, partition)``."""


def changelog_topic(app_id: str, name: str) -> str:
    return f"{app_id}-{name}-changelog"


def ensure_changelog(client_config: dict[str, Any], topic: str, partitions: int) -> None:
    """Create the compacted changelog topic when missing; an existing one must have
    ``partitions`` partitions."""
    admin = AdminClient({**client_config, "log_level": 0})
    # The metadata of every topic: asking for this one alone would let a broker that
    # creates topics on first use create it, with its defaults and without compaction.
    found = admin.list_topics(timeout=10).topics.get(topic)
    if found is not None and found.error is None and found.partitions:
        if len(found.partitions) != partitions:
            raise RuntimeError(f"changelog {topic!r} has {len(found.partitions)} partitions; "
                               f"the source topic has {partitions}")
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        config = admin.describe_configs([resource])[resource].result(timeout=10)
        policy = config["cleanup.policy"].value if "cleanup.policy" in config else ""
        if "compact" not in policy:
            raise RuntimeError(f"changelog {topic!r} is not compacted (cleanup.policy="
                               f"{policy}); delete it or set cleanup.policy=compact")
        return
    config = {"cleanup.policy": "compact", "segment.ms": "60000",
              "min.cleanable.dirty.ratio": "0.1", "compression.type": "producer"}
    future = admin.create_topics([NewTopic(topic, partitions, 1, config=config)],
                                 operation_timeout=10)[topic]
    try:
        future.result()
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise


class ChangelogState:
    """``{partition: {key: value}}`` with staged changes and a changelog topic.

    Keys are integers (a card or terminal id), values bytes (``b""``: nothing yet).
    """

    def __init__(self, topic: str, client_config: dict[str, Any]) -> None:
        self.topic = topic
        self.client_config = client_config
        self.partitions: dict[int, dict[int, bytes]] = {}
        self.staged: dict[int, dict[int, bytes]] = {}
        self.restored_records = 0

    def owns(self, partition: int) -> bool:
        return partition in self.partitions

    def table(self, partition: int) -> dict[int, bytes]:
        """The partition's map (restore it first)."""
        return self.partitions[partition]

    def get(self, partition: int, key: int) -> bytes:
        return self.partitions[partition].get(key, b"")

    def put(self, partition: int, key: int, value: bytes) -> None:
        self.partitions[partition][key] = value
        self.staged.setdefault(partition, {})[key] = value

    def checkpoint(self, produce: Produce) -> int:
        """Produce one changelog record a changed key; returns how many."""
        count = 0
        for partition, changed in self.staged.items():
            for key, value in changed.items():
                produce(self.topic, b"%d" % key, value, partition)
            count += len(changed)
        self.staged = {}
        return count

    def discard_staged(self, partitions: Iterable[int]) -> None:
        """Forget the staged and in-memory state of ``partitions`` (a failed batch: they
        are restored from the changelog again before their next batch)."""
        for p in partitions:
            self.staged.pop(p, None)
            self.partitions.pop(p, None)

    def drop(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their state goes with them."""
        self.discard_staged(partitions)

    def restore(self, partitions: Iterable[int], timeout_s: float = 300.0) -> None:
        """Read the changelog of ``partitions`` from its start to its end (blocking)."""
        wanted = [p for p in partitions if p not in self.partitions]
        if not wanted:
            return
        began = time.monotonic()
        consumer = Consumer({**self.client_config, "group.id": f"{self.topic}-restore",
                             "enable.auto.commit": False, "enable.partition.eof": False,
                             "fetch.max.bytes": 64 * 1024 * 1024})
        try:
            ends: dict[int, int] = {}
            for p in wanted:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                           timeout=30)
                if high > low:
                    ends[p] = high
                self.partitions[p] = {}
            if ends:
                consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                                 for p in ends])
            records = 0
            while ends:
                if time.monotonic() - began > timeout_s:
                    raise TimeoutError(f"restoring {self.topic} {sorted(ends)} took over "
                                       f"{timeout_s:.0f} s")
                # A short wait: consume() returns when the batch is full or the wait is
                # over, and a partition's last records seldom fill a batch (a 1 s wait
                # made every restore take at least 1 s).
                for message in consumer.consume(10_000, 0.05):
                    if message.error() is not None:
                        raise KafkaException(message.error())
                    partition, offset, raw_key = (message.partition(), message.offset(),
                                                  message.key())
                    # A record without an error has a partition and an offset; every
                    # changelog record has a key.
                    assert partition is not None and offset is not None and raw_key is not None
                    table = self.partitions[partition]
                    key = int(raw_key)
                    value = message.value()
                    if value is None:
                        table.pop(key, None)
                    else:
                        table[key] = value
                    records += 1
                    if partition in ends and offset >= ends[partition] - 1:
                        del ends[partition]
            self.restored_records += records
            log.info("restored %s partitions %s: %d records, %d keys, %.2f s", self.topic,
                     wanted, records, sum(len(self.partitions[p]) for p in wanted),
                     time.monotonic() - began)
        finally:
            consumer.close()
