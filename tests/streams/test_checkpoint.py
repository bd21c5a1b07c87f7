"""The batch loop's checkpoints: changelog, one flush with the feature log, then the
offsets; batches go on while a checkpoint flushes; a failure commits nothing and hands
the batches back. No service: the producer and the pipeline are recorded fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np

from streams.dataplane.batches import BatchBuffer, RecordBatch
from streams.dataplane.checkpoint import BatchLoop
from streams.dataplane.metrics import WorkerMetrics
from streams.dataplane.offsets import SourceOffsets
from streams.dataplane.state import ChangelogState


def records(partition: int, offsets: range) -> RecordBatch:
    n = len(offsets)
    return RecordBatch("t", np.full(n, partition, np.int32), np.array(offsets, np.int64),
                       np.zeros(n), [None] * n, [b"%d" % o for o in offsets])


class World:
    """A recorded producer, pipeline and group, in the order things happened."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.committed: dict[int, int] = {0: 0, 1: 0}
        self.flush_gate: asyncio.Event | None = None
        self.fail_flush = False
        self.disk_full = False
        self.fail_on: set[int] = set()
        self.started = asyncio.Event()
        self.started.set()
        self.processed: list[list[int]] = []
        self.kept: list[list[int]] = []

    # the emitter
    def changelog(self, topic: str, key: bytes, value: bytes | None, partition: int) -> None:
        self.steps.append(f"changelog {partition}:{key.decode()}")

    async def flush(self) -> None:
        if self.flush_gate is not None:
            await self.flush_gate.wait()
        if self.fail_flush:
            raise RuntimeError("broker gone")
        self.steps.append("flush")

    # the pipeline
    async def start(self) -> None:
        pass

    async def process(self, batch: RecordBatch) -> None:
        offsets = batch.offset.tolist()
        if self.fail_on & set(offsets):
            raise RuntimeError("poison")
        for p, o in zip(batch.partition.tolist(), offsets, strict=True):
            state.put(p, o % 3, b"x")
        self.processed.append(offsets)
        self.kept.append(offsets)
        self.steps.append(f"process {offsets[0]}-{offsets[-1]}")

    def cut(self) -> list[list[int]]:
        rows, self.kept = self.kept, []
        return rows

    async def persist(self, rows: list[list[int]]) -> None:
        if self.disk_full:
            self.steps.append("persist failed")
            raise OSError(28, "No space left on device")
        self.steps.append(f"persist {sum(len(r) for r in rows)} rows")

    def discard(self) -> None:
        self.kept = []
        self.steps.append("discard")

    # the group
    async def read(self, partitions: list[int]) -> Mapping[int, int | None]:
        return {p: self.committed[p] for p in partitions}

    async def fill(self, partition: int, start: int, end: int) -> RecordBatch:
        self.steps.append(f"fill {partition}:{start}-{end - 1}")
        return records(partition, range(start, end))

    async def commit(self, offsets: Mapping[int, int]) -> bool:
        self.committed.update(offsets)
        self.steps.append(f"commit {dict(sorted(offsets.items()))}")
        return True


state = ChangelogState("cl", {})


def loop_of(world: World) -> BatchLoop:
    global state
    state = ChangelogState("cl", {})
    state.partitions = {0: {}, 1: {}}
    emitter: Any = world
    buffer = BatchBuffer("t")
    buffer.assign([0, 1])
    return BatchLoop(buffer, SourceOffsets("t", world.read, world.fill, world.commit), world,
                     state, emitter, WorkerMetrics(), batch_max=100, batch_wait_s=0.0,
                     commit_interval_s=3600)


def test_a_checkpoint_commits_after_the_changelog_the_flush_and_the_feature_log() -> None:
    world = World()
    loop = loop_of(world)

    async def scenario() -> None:
        await loop._handle(records(0, range(0, 4)))
        await loop._handle(records(1, range(0, 2)))
        async with loop.lock:
            await loop.checkpoint()

    asyncio.run(scenario())
    assert world.steps[:2] == ["process 0-3", "process 0-1"]
    changelog = world.steps[2:7]
    assert sorted(changelog) == ["changelog 0:0", "changelog 0:1", "changelog 0:2",
                                 "changelog 1:0", "changelog 1:1"]  # one a changed key
    assert set(world.steps[7:9]) == {"flush", "persist 6 rows"}
    assert world.steps[9:] == ["commit {0: 4, 1: 2}"]


def test_batches_go_on_while_a_checkpoint_flushes_and_belong_to_the_next_one() -> None:
    world = World()
    loop = loop_of(world)

    async def scenario() -> None:
        world.flush_gate = asyncio.Event()
        await loop._handle(records(0, range(0, 4)))
        loop._in_flight = asyncio.create_task(loop._checkpoint(*loop._cut()))
        await asyncio.sleep(0.01)
        await loop._handle(records(0, range(4, 6)))  # while the flush waits
        world.flush_gate.set()
        await loop._in_flight
        assert world.committed == {0: 4, 1: 0}  # the first checkpoint's offsets only
        async with loop.lock:
            await loop.checkpoint()

    asyncio.run(scenario())
    assert world.steps.index("process 4-5") < world.steps.index("commit {0: 4}")
    assert world.steps[-1] == "commit {0: 6}" and world.committed[0] == 6
    assert [s for s in world.steps if s.startswith("persist")] == ["persist 4 rows",
                                                                   "persist 2 rows"]


def test_a_failed_batch_commits_nothing_of_it_and_is_handled_again() -> None:
    world = World()
    loop = loop_of(world)
    world.fail_on = {5}

    async def scenario() -> None:
        await loop._handle(records(0, range(0, 4)))
        async with loop.lock:
            await loop.checkpoint()
        await loop._handle(records(0, range(4, 8)))  # fails: rewound, state dropped
        assert not state.owns(0) and "discard" in world.steps
        world.fail_on = set()
        state.partitions[0] = {}  # what the restore from the changelog gives back
        await loop._handle(records(0, range(8, 10)))  # 4-7 never came back: read again
        async with loop.lock:
            await loop.checkpoint()

    asyncio.run(scenario())
    assert "fill 0:4-7" in world.steps
    assert world.processed == [[0, 1, 2, 3], list(range(4, 10))]
    assert [s for s in world.steps if s.startswith("commit")] == ["commit {0: 4}",
                                                                   "commit {0: 10}"]


def test_a_failed_checkpoint_commits_nothing_and_hands_its_batches_back() -> None:
    world = World()
    loop = loop_of(world)
    world.fail_flush = True

    async def scenario() -> None:
        await loop._handle(records(0, range(0, 4)))
        async with loop.lock:
            await loop.checkpoint()
        assert world.committed == {0: 0, 1: 0} and not loop.pending
        assert not state.owns(0) and 0 not in loop.offsets.next
        world.fail_flush = False
        state.partitions[0] = {}
        await loop._handle(records(0, range(4, 6)))
        async with loop.lock:
            await loop.checkpoint()

    asyncio.run(scenario())
    assert "fill 0:0-3" in world.steps  # the batch not committed is handled again
    assert world.committed[0] == 6


def test_a_full_disk_holds_the_checkpoint_and_the_loop_without_handling_anything_twice(
) -> None:
    """The feature log cannot be written: the checkpoint retries its write in place
    (its scores are already out; handling the batches again would only send them again),
    commits nothing meanwhile, and the loop takes no new batch; once there is room, the
    rows are written and the offsets committed, each batch handled once."""
    world = World()
    loop = loop_of(world)
    loop.commit_interval_s = 0.05
    world.disk_full = True

    async def scenario() -> None:
        await loop._handle(records(0, range(0, 4)))
        loop._in_flight = asyncio.create_task(loop._checkpoint(*loop._cut()))
        await asyncio.sleep(0.5)
        assert world.committed == {0: 0, 1: 0}, "committed before the rows were written"
        assert loop._held_back(), "the loop would go on taking batches"
        assert loop.metrics.feature_log_blocked._value.get() == 1
        world.disk_full = False
        await loop._in_flight
        assert not loop._held_back()
        assert loop.metrics.feature_log_blocked._value.get() == 0

    asyncio.run(scenario())
    assert world.steps.count("persist failed") >= 2
    assert world.processed == [[0, 1, 2, 3]], "a batch was handled again"
    assert "persist 4 rows" in world.steps and world.committed[0] == 4
    assert world.steps.index("persist 4 rows") < world.steps.index("commit {0: 4}")


def test_a_partition_with_nothing_to_handle_is_reported_caught_up_once() -> None:
    world = World()
    world.committed = {0: 5, 1: 0}
    seen: list[tuple[int, dict[int, bytes]]] = []

    async def ends(partitions: list[int]) -> Mapping[int, int]:
        return {0: 5, 1: 3}

    async def scenario() -> None:
        loop = loop_of(world)
        loop.offsets.ends = ends
        world.caught_up = lambda p, table: seen.append((p, dict(table)))  # type: ignore[attr-defined]
        state.partitions = {1: {}}  # partition 0 is restored from the changelog first
        state.restore = lambda partitions: state.partitions.update(  # type: ignore[method-assign]
            {p: {9: b"restored"} for p in partitions})
        for _ in range(2):
            loop._caught_up_checked = float("-inf")
            assert loop._waiting_to_catch_up()
            await loop._mark_caught_up()
        assert loop._caught_up == {0}
        await loop._handle(records(1, range(0, 3)))  # partition 1's batch marks it
        assert loop._caught_up == {0, 1} and not loop._waiting_to_catch_up()

    asyncio.run(scenario())
    assert seen == [(0, {9: b"restored"})]
