"""Source offsets the worker commits itself: in order, per partition, after the work.

A worker's records can go missing between the fetch and the batch loop, or come twice:
a rebalance drops what was fetched for partitions being moved and seeks back to the
committed offsets; Faust's recovery (0.15) resumes partitions, seeks and then empties its
buffers, so records fetched between the resume and the seek were lost and the rest came
later, out of place (seen in the workers' logs as the first batch 20-30 offsets after
the commit). With Faust's acknowledgements the next commit then passed such holes.

The worker therefore turns Faust's acknowledgements off for its source topics and keeps
the offsets itself, as a sequence per partition:

- the next offset to handle starts at the group's committed offset (or the partition's
  first offset when the group never committed and reads from the earliest);
- an event at that offset is admitted and advances it; an event below it is a
  redelivery and is dropped (it was handled already);
- an event above it is a hole: the missing offsets are read from Kafka directly (a
  plain consumer assigned to the partition, no group) and handled first, in order.
  Offsets no record occupies (a transactional producer's markers) are passed;
- at a checkpoint, once the batches since the last one are handled (outputs and
  changelog acknowledged by Kafka, ``streams/dataplane/checkpoint.py``), the next offset of each of
  their partitions is committed; a batch that fails is rewound (its partitions start
  again from the committed offset).

The high-rate topics reach the worker as :class:`streams.dataplane.batches.RecordBatch` columns
beneath Faust's per-event path, so the sequencing is done a batch at a time, on columns.

Nothing is committed that was not handled, and nothing is handled twice in a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping

import numpy as np

from streams.dataplane.batches import RecordBatch

log = logging.getLogger(__name__)

Committed = Callable[[list[int]], Awaitable[Mapping[int, int | None]]]
Fill = Callable[[int, int, int], Awaitable[RecordBatch]]
Commit = Callable[[Mapping[int, int]], Awaitable[bool]]
Ends = Callable[[list[int]], Awaitable[Mapping[int, int]]]


class SourceOffsets:
    """Sequencing and commits of one source topic's partitions in one worker.

    Parameters
    ----------
    topic
        The source topic (its name also labels the logs).
    committed
        The group's committed offsets of some partitions (``None`` where there is none;
        the next offset to read otherwise).
    fill
        ``fill(partition, start, end)``: the partition's records at offsets
        ``start <= offset < end``, read from Kafka, in offset order.
    commit
        Commits ``{partition: next offset}`` for the group; ``False`` when the partitions
        are no longer assigned.
    ends
        The end offsets (the next offset to be written) of some partitions, where known.
    """

    def __init__(self, topic: str, committed: Committed, fill: Fill, commit: Commit,
                 ends: Ends | None = None) -> None:
        self.topic = topic
        self._committed, self._fill, self._commit = committed, fill, commit
        self.ends = ends
        self.next: dict[int, int | None] = {}
        self.lock = asyncio.Lock()
        self.redelivered = 0
        self.filled = 0
        self.holes = 0

    async def admit(self, batch: RecordBatch) -> RecordBatch:
        """The records to handle for ``batch``, in order per partition; see the module
        docstring."""
        partitions = np.unique(batch.partition).tolist()
        unknown = [p for p in partitions if p not in self.next]
        if unknown:
            committed = await self._committed(unknown)
            for p in unknown:
                self.next[p] = committed.get(p)
                log.info("%s partition %d starts at %s", self.topic, p, self.next[p])
        pieces: list[RecordBatch] = []
        for p in partitions:
            rows = np.flatnonzero(batch.partition == p)
            offsets = batch.offset[rows]
            want = self.next[p]
            # Keep each offset above every one before it (and at or above ``want``): what
            # is left out was handled already.
            floor = np.maximum.accumulate(np.concatenate(([-1 if want is None else want - 1],
                                                          offsets)))[:-1]
            fresh = offsets > floor
            self.redelivered += int((~fresh).sum())
            rows, offsets = rows[fresh], offsets[fresh]
            if not len(rows):
                continue
            expected = np.concatenate(([offsets[0] if want is None else want],
                                       offsets[:-1] + 1))
            start = 0
            for i in np.flatnonzero(offsets > expected).tolist():
                if i > start:
                    pieces.append(batch.take(rows[start:i]))
                pieces.append(await self._fill_hole(p, int(expected[i]), int(offsets[i])))
                start = i
            pieces.append(batch.take(rows[start:]))
            self.next[p] = int(offsets[-1]) + 1
        return RecordBatch.concat(batch.topic, pieces)

    async def _fill_hole(self, p: int, want: int, offset: int) -> RecordBatch:
        missing = await self._fill(p, want, offset)
        offsets = missing.offset.tolist()
        if offsets != sorted(set(offsets)) or any(not want <= o < offset for o in offsets):
            raise RuntimeError(f"{self.topic} partition {p}: read offsets {offsets} for "
                               f"the hole {want}-{offset - 1}")
        self.holes += 1
        self.filled += len(missing)
        log.warning("%s partition %d: offsets %d-%d never reached the worker; read %d "
                    "record(s) of them from Kafka directly", self.topic, p, want,
                    offset - 1, len(missing))
        return missing

    async def commit(self, handled: RecordBatch) -> None:
        """Commit the next offset of each partition of a handled batch."""
        await self.commit_offsets(handled.next_offsets())

    async def commit_offsets(self, offsets: Mapping[int, int]) -> None:
        """Commit ``{partition: next offset}``."""
        if not offsets:
            return
        if await self._commit(offsets):
            log.info("committed %s", {f"{self.topic}:{p}": o for p, o in offsets.items()})
        else:
            log.warning("%s commit of %s refused (partitions reassigned)", self.topic, offsets)

    async def positions(self, partitions: list[int]) -> dict[int, int | None]:
        """The next offset to handle of each partition: where this worker stands, else the
        group's committed offset."""
        unknown = [p for p in partitions if self.next.get(p) is None]
        committed = await self._committed(unknown) if unknown else {}
        return {p: self.next[p] if self.next.get(p) is not None else committed.get(p)
                for p in partitions}

    def rewind(self, partitions: Iterable[int]) -> None:
        """Forget where ``partitions`` stand: the next batch reads the committed offset."""
        for p in partitions:
            self.next.pop(p, None)

    @contextlib.asynccontextmanager
    async def batch(self, batch: RecordBatch) -> AsyncIterator[RecordBatch]:
        """Admit ``batch``, let the caller handle it, then commit (or rewind on error)."""
        async with self.lock:
            admitted = await self.admit(batch)
            try:
                yield admitted
            except BaseException:
                self.rewind(np.unique(admitted.partition).tolist())
                raise
            await self.commit(admitted)
