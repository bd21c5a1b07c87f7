"""Source offsets kept by the worker: in order per partition, holes sought back, commits
only of handled events. No service: the consumer is three recorded callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from streams.offsets import SourceOffsets


def events(partition: int, *offsets: int) -> list[Any]:
    return [SimpleNamespace(message=SimpleNamespace(partition=partition, offset=o))
            for o in offsets]


def offsets_of(batch: list[Any]) -> list[tuple[int, int]]:
    return [(e.message.partition, e.message.offset) for e in batch]


class Consumer:
    """The group's committed offsets, and every seek and commit the guard asks for."""

    def __init__(self, committed: dict[int, int | None]) -> None:
        self.committed = dict(committed)
        self.reads: list[list[int]] = []
        self.seeks: list[tuple[int, int]] = []
        self.commits: list[dict[int, int]] = []
        self.now = 0.0

    async def read(self, partitions: list[int]) -> Mapping[int, int | None]:
        self.reads.append(partitions)
        return {p: self.committed.get(p) for p in partitions}

    async def seek(self, partition: int, offset: int) -> None:
        self.seeks.append((partition, offset))

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        self.commits.append(dict(offsets))
        self.committed.update(offsets)
        return True

    def guard(self, **kwargs: Any) -> SourceOffsets:
        return SourceOffsets("t", self.read, self.seek, self.commit,
                             clock=lambda: self.now, **kwargs)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def handle(guard: SourceOffsets, batch: list[Any]) -> list[tuple[int, int]]:
    async with guard.batch(batch) as admitted:
        return offsets_of(admitted)


def test_in_order_events_are_handled_and_committed_per_partition() -> None:
    consumer = Consumer({0: 10, 1: 5})
    guard = consumer.guard()

    async def scenario() -> None:
        assert await handle(guard, events(0, 10, 11) + events(1, 5)) == [(0, 10), (0, 11),
                                                                          (1, 5)]
        assert await handle(guard, events(1, 6, 7) + events(0, 12)) == [(1, 6), (1, 7),
                                                                         (0, 12)]

    run(scenario())
    assert consumer.reads == [[0, 1]]  # committed offsets read once per partition
    assert consumer.commits == [{0: 12, 1: 6}, {1: 8, 0: 13}]
    assert consumer.seeks == []


def test_the_restart_skip_is_held_back_sought_and_then_handled_in_order() -> None:
    # What Faust did after a kill -9: the committed offset is 100, the first events the
    # stream sees start at 122.
    consumer = Consumer({0: 100, 1: 50})
    guard = consumer.guard()

    async def scenario() -> None:
        first = await handle(guard, events(0, 122, 123) + events(1, 50, 51))
        assert first == [(1, 50), (1, 51)]  # partition 1 is fine; 0 is held back
        assert consumer.seeks == [(0, 100)]
        assert consumer.commits == [{1: 52}]  # nothing of partition 0 committed
        # stale events still queued behind the hole: held back, no second seek yet
        assert await handle(guard, events(0, 124)) == []
        assert consumer.seeks == [(0, 100)]
        # the read from the seek: 100 on, then the redelivered 122-124 once each
        assert await handle(guard, events(0, *range(100, 125))) == [
            (0, o) for o in range(100, 125)]
        assert await handle(guard, events(0, 122, 125)) == [(0, 125)]

    run(scenario())
    assert consumer.commits[-2:] == [{0: 125}, {0: 126}]
    assert guard.redelivered == 1 and guard.held_back == 3 and not guard.holes


def test_a_hole_is_sought_again_until_the_missing_event_arrives() -> None:
    consumer = Consumer({0: 7})
    guard = consumer.guard(reseek_after_s=2.0)

    async def scenario() -> None:
        assert await handle(guard, events(0, 9)) == []
        await guard.reseek()  # too soon
        consumer.now = 2.5
        await guard.reseek()
        assert consumer.seeks == [(0, 7), (0, 7)]
        assert await handle(guard, events(0, 7, 8, 9)) == [(0, 7), (0, 8), (0, 9)]
        consumer.now = 10.0
        await guard.reseek()  # resolved: nothing to seek

    run(scenario())
    assert consumer.seeks == [(0, 7), (0, 7)]
    assert consumer.commits == [{0: 10}]


def test_a_hole_a_fresh_read_shows_again_and_again_is_a_real_gap() -> None:
    # e.g. a transactional producer's commit markers at offsets 3 and 4
    consumer = Consumer({0: 3})
    guard = consumer.guard(reseek_after_s=0.0, accept_gap_after=3)

    async def scenario() -> list[list[tuple[int, int]]]:
        return [await handle(guard, events(0, 5, 6)) for _ in range(4)]

    handled = run(scenario())
    assert handled == [[], [], [], [(0, 5), (0, 6)]]
    assert consumer.seeks == [(0, 3)] * 3
    assert guard.gaps_passed == 1
    assert consumer.commits == [{0: 7}]


def test_no_commit_and_first_offset_taken_when_the_group_never_committed() -> None:
    consumer = Consumer({0: None})
    guard = consumer.guard()

    async def scenario() -> None:
        assert await handle(guard, events(0, 40, 41)) == [(0, 40), (0, 41)]

    run(scenario())
    assert consumer.commits == [{0: 42}]


def test_a_failed_batch_is_rewound_to_the_committed_offset() -> None:
    consumer = Consumer({0: 0})
    guard = consumer.guard()

    async def scenario() -> None:
        assert await handle(guard, events(0, 0, 1)) == [(0, 0), (0, 1)]
        with pytest.raises(RuntimeError):
            async with guard.batch(events(0, 2, 3)):
                raise RuntimeError("Triton went away")
        # the failed events come again after the seek the hole asks for
        assert await handle(guard, events(0, 4)) == []
        assert consumer.seeks == [(0, 2)]
        assert await handle(guard, events(0, 2, 3, 4)) == [(0, 2), (0, 3), (0, 4)]

    run(scenario())
    assert consumer.commits == [{0: 2}, {0: 5}]
    assert consumer.reads == [[0], [0]]


def test_a_revoked_partition_starts_again_from_the_committed_offset() -> None:
    consumer = Consumer({0: 0})
    guard = consumer.guard()

    async def scenario() -> None:
        await handle(guard, events(0, 0, 1))
        guard.rewind([0])
        consumer.committed[0] = 30  # another worker went on meanwhile
        assert await handle(guard, events(0, 30)) == [(0, 30)]

    run(scenario())
    assert consumer.commits == [{0: 2}, {0: 31}]
