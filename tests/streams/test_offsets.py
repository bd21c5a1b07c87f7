"""Source offsets kept by the worker: in order per partition, holes filled from Kafka,
commits only of handled events. No service: the consumer is recorded callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from streams.dataplane.batches import RecordBatch
from streams.dataplane.offsets import SourceOffsets


class Events(RecordBatch):
    """A batch of records of one topic; ``+`` appends another batch (as a fetch does)."""

    def __add__(self, other: RecordBatch) -> Events:
        both = RecordBatch.concat("t", [self, other])
        return Events(both.topic, both.partition, both.offset, both.timestamp, both.key,
                      both.value)


def events(partition: int, *offsets: int) -> Events:
    values = [b"%d:%d" % (partition, o) for o in offsets]
    return Events("t", np.full(len(offsets), partition, np.int32),
                  np.array(offsets, dtype=np.int64), np.zeros(len(offsets)),
                  list(values), values)


def offsets_of(batch: RecordBatch) -> list[tuple[int, int]]:
    assert batch.value == [b"%d:%d" % (p, o) for p, o in
                           zip(batch.partition.tolist(), batch.offset.tolist(), strict=True)]
    return list(zip(batch.partition.tolist(), batch.offset.tolist(), strict=True))


class Kafka:
    """The group's committed offsets, the records of each partition (offsets that hold
    no record are left out), and every read and commit the guard asks for."""

    def __init__(self, committed: dict[int, int | None], ends: dict[int, int],
                 markers: frozenset[tuple[int, int]] = frozenset()) -> None:
        self.committed = dict(committed)
        self.log = {p: [o for o in range(end) if (p, o) not in markers]
                    for p, end in ends.items()}
        self.reads: list[list[int]] = []
        self.fills: list[tuple[int, int, int]] = []
        self.commits: list[dict[int, int]] = []

    async def read(self, partitions: list[int]) -> Mapping[int, int | None]:
        self.reads.append(partitions)
        return {p: self.committed.get(p) for p in partitions}

    async def fill(self, partition: int, start: int, end: int) -> RecordBatch:
        self.fills.append((partition, start, end))
        return events(partition, *[o for o in self.log[partition] if start <= o < end])

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        self.commits.append(dict(offsets))
        self.committed.update(offsets)
        return True

    def guard(self) -> SourceOffsets:
        return SourceOffsets("t", self.read, self.fill, self.commit)


async def handle(guard: SourceOffsets, batch: RecordBatch) -> list[tuple[int, int]]:
    async with guard.batch(batch) as admitted:
        return offsets_of(admitted)


def test_in_order_events_are_handled_and_committed_per_partition() -> None:
    kafka = Kafka({0: 10, 1: 5}, {0: 20, 1: 20})
    guard = kafka.guard()

    async def scenario() -> None:
        assert await handle(guard, events(0, 10, 11) + events(1, 5)) == [
            (0, 10), (0, 11), (1, 5)]
        # in offset order per partition, the partitions one after the other
        assert await handle(guard, events(1, 6, 7) + events(0, 12)) == [
            (0, 12), (1, 6), (1, 7)]

    asyncio.run(scenario())
    assert kafka.reads == [[0, 1]]  # committed offsets read once per partition
    assert kafka.commits == [{0: 12, 1: 6}, {1: 8, 0: 13}]
    assert kafka.fills == []


def test_events_that_never_reached_the_stream_are_read_and_handled_first() -> None:
    # What Faust did after a kill -9: the committed offset is 100, the first events the
    # stream sees start at 122.
    kafka = Kafka({0: 100, 1: 50}, {0: 200, 1: 200})
    guard = kafka.guard()

    async def scenario() -> None:
        first = await handle(guard, events(0, 122, 123) + events(1, 50, 51))
        assert first == [(0, o) for o in range(100, 124)] + [(1, 50), (1, 51)]
        # one event lost at a batch boundary
        assert await handle(guard, events(0, 125, 126)) == [(0, 124), (0, 125), (0, 126)]
        # the lost events arriving late after all: already handled, dropped
        assert await handle(guard, events(0, 124, 125, 127)) == [(0, 127)]

    asyncio.run(scenario())
    assert kafka.fills == [(0, 100, 122), (0, 124, 125)]
    assert kafka.commits == [{0: 124, 1: 52}, {0: 127}, {0: 128}]
    assert guard.holes == 2 and guard.filled == 23 and guard.redelivered == 2


def test_offsets_that_hold_no_record_are_passed() -> None:
    # e.g. a transactional producer's commit markers at offsets 3 and 4
    kafka = Kafka({0: 3}, {0: 10}, markers=frozenset({(0, 3), (0, 4)}))
    guard = kafka.guard()

    async def scenario() -> list[tuple[int, int]]:
        return await handle(guard, events(0, 5, 6))

    assert asyncio.run(scenario()) == [(0, 5), (0, 6)]
    assert kafka.fills == [(0, 3, 5)]
    assert kafka.commits == [{0: 7}]


def test_a_fill_outside_the_hole_is_an_error_and_commits_nothing() -> None:
    kafka = Kafka({0: 0}, {0: 10})

    async def wrong(partition: int, start: int, end: int) -> RecordBatch:
        return events(partition, start, end)  # one past the hole

    guard = SourceOffsets("t", kafka.read, wrong, kafka.commit)
    with pytest.raises(RuntimeError, match="for the hole 0-2"):
        asyncio.run(handle(guard, events(0, 3)))
    assert kafka.commits == []


def test_no_commit_and_first_offset_taken_when_the_group_never_committed() -> None:
    kafka = Kafka({0: None}, {0: 100})
    guard = kafka.guard()
    assert asyncio.run(handle(guard, events(0, 40, 41))) == [(0, 40), (0, 41)]
    assert kafka.commits == [{0: 42}] and kafka.fills == []


def test_a_failed_batch_is_rewound_and_handled_again() -> None:
    kafka = Kafka({0: 0}, {0: 10})
    guard = kafka.guard()

    async def scenario() -> None:
        assert await handle(guard, events(0, 0, 1)) == [(0, 0), (0, 1)]
        with pytest.raises(RuntimeError):
            async with guard.batch(events(0, 2, 3)):
                raise RuntimeError("Triton went away")
        # the stream goes on after the failed batch: its events are read again
        assert await handle(guard, events(0, 4)) == [(0, 2), (0, 3), (0, 4)]

    asyncio.run(scenario())
    assert kafka.commits == [{0: 2}, {0: 5}]
    assert kafka.reads == [[0], [0]] and kafka.fills == [(0, 2, 4)]


def test_a_revoked_partition_starts_again_from_the_committed_offset() -> None:
    kafka = Kafka({0: 0}, {0: 50})
    guard = kafka.guard()

    async def scenario() -> None:
        await handle(guard, events(0, 0, 1))
        guard.rewind([0])
        kafka.committed[0] = 30  # another worker went on meanwhile
        assert await handle(guard, events(0, 30)) == [(0, 30)]

    asyncio.run(scenario())
    assert kafka.commits == [{0: 2}, {0: 31}] and kafka.fills == []


def test_holes_inside_one_batch_and_repeats_within_it_are_handled_in_order() -> None:
    kafka = Kafka({0: 0}, {0: 30})
    guard = kafka.guard()
    # a fetch after a seek back: 0-2, then 1-2 again, then a jump past 3-4
    batch = events(0, 0, 1, 2, 1, 2, 5, 6)
    assert asyncio.run(handle(guard, batch)) == [(0, o) for o in range(7)]
    assert kafka.fills == [(0, 3, 5)] and guard.redelivered == 2
    assert kafka.commits == [{0: 7}]
