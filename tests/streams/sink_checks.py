"""What the exactly-once claims are checked against: an output topic read to its end.

A reader that stops as soon as every id was seen never reads a later duplicate. These
helpers read a topic from given start offsets exactly up to the end offsets taken when
they are called, so they are called once the workers writing there have stopped (or
drained): the records read are then every record the workers wrote, no fewer, no more.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.clients.kafka_io import Received, consume, topic_end_offsets
from streams.settings import Settings


def topic_start_offsets(bootstrap: str, settings: Settings, topic: str) -> dict[int, int]:
    """The low watermark of each partition of ``topic``: its first stored offset."""
    consumer = Consumer({**settings.kafka.client_config(bootstrap),
                         "group.id": f"offsets-{uuid.uuid4().hex[:8]}"})
    try:
        ends = topic_end_offsets(bootstrap, settings, topic)
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0]
                for p in ends}
    finally:
        consumer.close()


def read_to_end(bootstrap: str, settings: Settings, topic: str,
                start: dict[int, int] | None = None, timeout_s: float = 120.0
                ) -> list[Received]:
    """Every record of ``topic`` from ``start`` up to the end offsets taken now.

    ``start`` maps each partition to its first offset to read (as
    :func:`streams.clients.kafka_io.topic_end_offsets` gave before the test produced); without it
    a partition is read from its first stored offset. The records are checked to be the
    whole range: as many as the end offsets less the start offsets (the writers are
    idempotent, not transactional: every offset holds a record).
    """
    end = topic_end_offsets(bootstrap, settings, topic)
    if start is None:
        start = topic_start_offsets(bootstrap, settings, topic)
    assert set(start) == set(end), f"{topic}: partitions {sorted(start)} then {sorted(end)}"
    expected = sum(end[p] - start[p] for p in end)
    inside: list[Received] = []
    checked = 0

    def done(received: list[Received]) -> bool:
        nonlocal checked
        inside.extend(m for m in received[checked:] if m.offset < end[m.partition])
        checked = len(received)
        return len(inside) >= expected

    done(consume(bootstrap, settings, topic, until=done, start=start, timeout_s=timeout_s))
    assert len(inside) == expected, (
        f"{topic}: read {len(inside)} of the {expected} records between offsets {start} "
        f"and {end} in {timeout_s:.0f} s")
    return inside


def tx_ids(records: list[Received]) -> list[int]:
    """The ``tx_id`` of each record, in the order read."""
    return [json.loads(m.value)["tx_id"] for m in records]


def assert_scored_once(records: list[Received], wanted: set[int]) -> None:
    """``records`` (a whole range of ``scores``) hold one score for each of ``wanted``
    and nothing else: count == distinct == expected."""
    counts = Counter(tx_ids(records))
    strangers = counts.keys() - wanted
    missing = wanted - counts.keys()
    repeated = {tx: n for tx, n in counts.items() if n > 1}
    assert not (strangers or missing or repeated), (
        f"{len(records)} scores for {len(wanted)} transactions: {len(missing)} never "
        f"scored, {len(repeated)} scored more than once (e.g. "
        f"{dict(list(repeated.items())[:3])}), {len(strangers)} scores of other ids")
    assert len(records) == len(counts) == len(wanted)


def redelivered(records: list[Received], wanted: set[int]) -> Counter[int]:
    """The ids of ``wanted`` scored more than once in ``records``, with their count;
    asserts that every one of ``wanted`` was scored and nothing else was."""
    counts = Counter(tx_ids(records))
    missing = wanted - counts.keys()
    strangers = counts.keys() - wanted
    assert not (missing or strangers), (
        f"{len(missing)} transactions never scored, {len(strangers)} scores of other ids")
    return Counter({tx: n for tx, n in counts.items() if n > 1})


@dataclass
class TopicAtDown:
    """What :func:`read_when_services_stop` read; ``error`` when the read failed."""

    records: list[Received] = field(default_factory=list)
    error: BaseException | None = None
    reads: int = 0


def read_when_services_stop(monkeypatch: pytest.MonkeyPatch, topic: str) -> TopicAtDown:
    """Read ``topic`` from its first offsets to its end when a run stops its services.

    A run (``factory run``, the loop) stops its workers and only then its services: the
    topic read at that moment holds everything its workers wrote. The services are
    stopped afterwards whatever the read gave.
    """
    from infra.local.manager import Stack

    captured = TopicAtDown()
    down: Callable[..., None] = Stack.down

    def read_then_down(self: Stack, *args: object, **kwargs: object) -> None:
        if captured.reads == 0:
            captured.reads += 1
            try:
                captured.records = read_to_end(self.endpoints().kafka, self.settings, topic)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                captured.error = exc
        down(self, *args, **kwargs)

    monkeypatch.setattr(Stack, "down", read_then_down)
    return captured
