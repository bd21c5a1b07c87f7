"""The changelog barrier waits for every write's acknowledgement, however slow."""

from __future__ import annotations

import asyncio
from typing import Any

from streams.changelog import ChangelogBarrier


class Table:
    """The two methods of a Faust table the barrier wraps; deliveries wait in a list."""

    def __init__(self) -> None:
        self.in_flight: list[Any] = []
        self.acknowledged: list[Any] = []

    def send_changelog(self, partition: int, key: bytes, value: bytes) -> str:
        # As Faust does, the callback is read from the instance at each write.
        self.in_flight.append((key, self._on_changelog_sent))
        return f"future-{key!r}"

    def _on_changelog_sent(self, fut: Any) -> None:
        self.acknowledged.append(fut)


class SlowProducer:
    """Each flush delivers at most one write, and the first flushes none: a loaded
    machine where Faust's own flush would have given up with writes still queued."""

    def __init__(self, table: Table, idle_flushes: int) -> None:
        self.table, self.idle_flushes, self.flushes = table, idle_flushes, 0

    async def flush(self) -> None:
        self.flushes += 1
        if self.flushes > self.idle_flushes and self.table.in_flight:
            key, callback = self.table.in_flight.pop(0)
            callback(key)


def test_wait_returns_once_every_write_so_far_is_acknowledged() -> None:
    table = Table()
    barrier = ChangelogBarrier(table)
    for key in (b"a", b"b", b"c"):
        assert table.send_changelog(0, key, b"state").startswith("future-")
    assert (barrier.written, barrier.acknowledged, barrier.pending) == (3, 0, 3)
    producer = SlowProducer(table, idle_flushes=5)
    asyncio.run(barrier.wait(producer))
    assert barrier.pending == 0 and not table.in_flight
    assert table.acknowledged == [b"a", b"b", b"c"], "Faust's own callback still runs"
    assert producer.flushes == 8


def test_writes_after_the_call_are_not_waited_for() -> None:
    table = Table()
    barrier = ChangelogBarrier(table)
    table.send_changelog(0, b"a", b"state")

    async def write_while_waiting() -> None:
        waiting = asyncio.create_task(barrier.wait(SlowProducer(table, idle_flushes=2)))
        await asyncio.sleep(0)
        table.send_changelog(0, b"later", b"state")
        await waiting

    asyncio.run(write_while_waiting())
    assert barrier.acknowledged >= 1 and barrier.written == 2
    asyncio.run(barrier.wait(SlowProducer(table, idle_flushes=0)))
    assert barrier.pending == 0


def test_nothing_written_returns_without_flushing() -> None:
    table = Table()
    barrier = ChangelogBarrier(table)
    producer = SlowProducer(table, idle_flushes=0)
    asyncio.run(barrier.wait(producer))
    assert producer.flushes == 0


def test_offset_ranges_per_partition() -> None:
    from types import SimpleNamespace

    from streams.changelog import offset_ranges

    events = [SimpleNamespace(message=SimpleNamespace(partition=p, offset=o))
              for p, o in ((0, 7), (1, 3), (0, 5), (0, 9), (1, 4))]
    assert offset_ranges(events) == {0: (5, 9), 1: (3, 4)}
    assert offset_ranges([]) == {}
