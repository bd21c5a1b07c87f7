"""Small confluent-kafka clients: produce transactions, read a topic back."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.settings import Settings
from streams.topics import TRANSACTIONS

EPOCH = pd.Timestamp("1970-01-01")


def transactions_from_frame(frame: pd.DataFrame) -> Iterable[tuple[bytes, bytes]]:
    """``(key, value)`` pairs of transaction records from a simulator-shaped frame.

    The frame has the handbook's columns (``TRANSACTION_ID``, ``TX_DATETIME``,
    ``CUSTOMER_ID``, ``TERMINAL_ID``, ``TX_AMOUNT``); the key is the card id.
    """
    seconds = (frame["TX_DATETIME"].to_numpy("datetime64[ns]").astype("int64") // 10**9)
    columns = zip(
        frame["TRANSACTION_ID"].to_numpy(np.int64).tolist(),
        seconds.tolist(),
        frame["CUSTOMER_ID"].to_numpy(np.int64).tolist(),
        frame["TERMINAL_ID"].to_numpy(np.int64).tolist(),
        frame["TX_AMOUNT"].to_numpy(np.float64).tolist(),
        strict=True,
    )
    for tx_id, event_time, card, terminal, amount in columns:
        value = (
            f'{{"v":1,"tx_id":{tx_id},"event_time":{event_time},"card_id":{card},'
            f'"terminal_id":{terminal},"amount":{amount!r}}}'
        )
        yield str(card).encode(), value.encode()


def producer(bootstrap: str, settings: Settings, **extra: object) -> Producer:
    return Producer({
        **settings.kafka.client_config(bootstrap),
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "compression.type": "lz4",
        "message.max.bytes": 2 * 1024 * 1024,
        **extra,
    })


def produce(bootstrap: str, settings: Settings, messages: Iterable[tuple[bytes | None, bytes]],
            topic: str = TRANSACTIONS) -> int:
    """Produce ``(key, value)`` pairs and wait until Kafka acknowledged every one."""
    client = producer(bootstrap, settings)
    errors: list[str] = []

    def on_delivery(err, _msg) -> None:  # noqa: ANN001
        if err is not None:
            errors.append(str(err))

    count = 0
    for key, value in messages:
        while True:
            try:
                client.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                client.poll(0.05)
        count += 1
        if count % 10000 == 0:
            client.poll(0)
    if client.flush(60) != 0 or errors:
        raise RuntimeError(f"producing to {topic} failed: {errors[:3]}")
    return count


@dataclass
class Received:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    partition: int
    offset: int
    timestamp_ms: int = 0


def consume(bootstrap: str, settings: Settings, topic: str, *,
            until: Callable[[list[Received]], bool], timeout_s: float = 120.0,
            start: dict[int, int] | None = None, progress: str | None = None) -> list[Received]:
    """Read ``topic`` until ``until(received)`` is true or the timeout passes.

    ``start`` maps partitions to the offsets to read from (as given by
    :func:`topic_end_offsets` before producing); without it every partition is read from
    the beginning. ``progress`` names what is counted in a progress line on stderr.
    """
    consumer = Consumer({
        **settings.kafka.client_config(bootstrap),
        "group.id": f"reader-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
    })
    if start is None:
        start = {p: 0 for p in _partitions(consumer, topic)}
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    received: list[Received] = []
    deadline = time.monotonic() + timeout_s
    shown = time.monotonic()
    try:
        while time.monotonic() < deadline and not until(received):
            for message in consumer.consume(num_messages=5000, timeout=0.2):
                if message.error():
                    continue
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None  # set when no error
                # The topics read back here hold no tombstones, and a consumer gets its
                # headers as a list of pairs (a dict is only for producing).
                received.append(Received(message.key(), cast(bytes, message.value()),
                                         list(cast(list[tuple[str, bytes]],
                                                   message.headers() or [])),
                                         partition, offset, message.timestamp()[1]))
            if progress and time.monotonic() - shown > 1.0:
                shown = time.monotonic()
                print(f"  {len(received):,} {progress} read", file=sys.stderr, flush=True)
    finally:
        consumer.close()
    return received


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    if metadata.error is not None:
        raise RuntimeError(f"topic {topic!r}: {metadata.error}")
    return sorted(metadata.partitions)


def topic_end_offsets(bootstrap: str, settings: Settings, topic: str) -> dict[int, int]:
    """The high watermark of each partition of ``topic``: where new messages will go."""
    consumer = Consumer({**settings.kafka.client_config(bootstrap),
                         "group.id": f"offsets-{uuid.uuid4().hex[:8]}"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in _partitions(consumer, topic)
        }
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, settings: Settings, group: str,
                      topic: str) -> dict[int, int]:
    """The offset ``group`` has committed on each partition of ``topic`` (0 for none)."""
    from confluent_kafka import KafkaException

    consumer = Consumer({**settings.kafka.client_config(bootstrap), "group.id": group,
                         "enable.auto.commit": False})
    deadline = time.monotonic() + 60.0
    try:
        partitions = [TopicPartition(topic, p) for p in _partitions(consumer, topic)]
        while True:
            try:
                return {tp.partition: max(tp.offset, 0)
                        for tp in consumer.committed(partitions, timeout=10)}
            except KafkaException:
                # A broker that just started may not have elected the group's
                # coordinator yet.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def pin_new_group(bootstrap: str, settings: Settings, group: str, topic: str) -> bool:
    """Commit ``topic``'s current end offsets for ``group`` unless it has committed ones.

    A new group told to start at the latest offset resolves "latest" only when its
    consumer first fetches, which can be after events produced meanwhile; pinned
    offsets make "latest" mean the moment before the worker starts. Returns whether
    offsets were committed.
    """
    from confluent_kafka import KafkaException

    consumer = Consumer({**settings.kafka.client_config(bootstrap), "group.id": group,
                         "enable.auto.commit": False})
    try:
        partitions = [TopicPartition(topic, p) for p in _partitions(consumer, topic)]
        deadline = time.monotonic() + 60.0
        while True:
            try:
                committed = consumer.committed(partitions, timeout=10)
                if any(tp.offset >= 0 for tp in committed):
                    return False
                ends = [TopicPartition(topic, tp.partition,
                                       consumer.get_watermark_offsets(tp, timeout=10)[1])
                        for tp in partitions]
                consumer.commit(offsets=ends, asynchronous=False)
                return True
            except KafkaException:
                # A broker that just started may not have elected the group's
                # coordinator yet.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()
