"""Micro-batches from the fetch buffer: closed when full or when the oldest record has
waited its share of the latency budget; revoked partitions never handled. No service."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np

from streams.dataplane.batches import BatchBuffer, RecordBatch


def records(partition: int, offsets: range) -> list[SimpleNamespace]:
    return [SimpleNamespace(partition=partition, offset=o, timestamp=1_000_000 + o,
                            key=b"k%d" % o, value=b"v%d" % o) for o in offsets]


def test_a_full_batch_closes_at_once_and_keeps_offset_order() -> None:
    async def scenario() -> tuple[RecordBatch, RecordBatch, float]:
        buffer = BatchBuffer("t")
        buffer.assign([0, 1])
        await buffer.put(0, records(0, range(0, 600)))
        await buffer.put(1, records(1, range(0, 600)))
        began = time.monotonic()
        first = await buffer.take(1000, within=10.0)
        second = await buffer.take(1000, within=0.01)
        return first, second, time.monotonic() - began

    first, second, took = asyncio.run(scenario())
    assert len(first) == 1000 and len(second) == 200
    assert took < 5.0  # the full batch did not wait for its 10 s
    assert first.offset[:600].tolist() == list(range(600))
    assert first.partition[600:].tolist() == [1] * 400
    assert second.offset.tolist() == list(range(400, 600))
    assert first.value[599] == b"v599" and first.timestamp[0] == 1000.0


def test_a_small_batch_closes_when_its_oldest_record_has_waited() -> None:
    async def scenario() -> tuple[int, float]:
        buffer = BatchBuffer("t")
        buffer.assign([0])
        await buffer.put(0, records(0, range(3)))
        began = time.monotonic()
        batch = await buffer.take(1000, within=0.2)
        return len(batch), time.monotonic() - began

    size, waited = asyncio.run(scenario())
    assert size == 3 and 0.15 <= waited < 2.0


def test_records_of_partitions_not_owned_are_dropped() -> None:
    async def scenario() -> RecordBatch:
        buffer = BatchBuffer("t")
        buffer.assign([0, 1])
        await buffer.put(0, records(0, range(5)))
        await buffer.put(1, records(1, range(5)))
        await buffer.put(2, records(2, range(5)))  # never assigned
        buffer.drop([1])  # revoked while waiting
        await buffer.put(1, records(1, range(5, 8)))  # fetched before the revoke
        return await buffer.take(100, within=0.01)

    batch = asyncio.run(scenario())
    assert set(batch.partition.tolist()) == {0} and batch.offset.tolist() == list(range(5))


def test_put_waits_while_the_buffer_is_full() -> None:
    async def scenario() -> list[str]:
        buffer = BatchBuffer("t", capacity=10)
        buffer.assign([0])
        seen: list[str] = []
        await buffer.put(0, records(0, range(10)))

        async def producer() -> None:
            await buffer.put(0, records(0, range(10, 20)))
            seen.append("put")

        task = asyncio.create_task(producer())
        await asyncio.sleep(0.05)
        seen.append("waiting")
        batch = await buffer.take(10, within=0.01)
        seen.append(f"took {len(batch)}")
        await task
        return seen

    assert asyncio.run(scenario()) == ["waiting", "took 10", "put"]


def test_take_and_offset_ranges_of_a_batch() -> None:
    batch = RecordBatch.of_records("t", records(3, range(7, 12)) + records(1, range(2, 4)))
    assert batch.offset_ranges() == {1: (2, 3), 3: (7, 11)}
    assert batch.next_offsets() == {1: 4, 3: 12}
    picked = batch.take(np.array([True, False, False, False, True, True, False]))
    assert picked.offset.tolist() == [7, 11, 2] and picked.key == [b"k7", b"k11", b"k2"]
