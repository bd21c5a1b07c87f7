"""Source offsets the worker commits itself: in order, per partition, after the work.

Faust 0.15 can let source events go missing between its consumer and a stream's
``take_events`` batches, and with Faust's acknowledgements the next commit then passed
them: labels missing from a terminal's counts, transactions never scored. Two causes
were found in a worker's own logs:

- ours: a table write made ``take_events`` put an event of the previous batch in place
  of a new one (``streams/changelog.py:write_as`` says how, and no longer does it);
- Faust's, after a restart with tables to restore: when recovery ends it resumes the
  stream partitions, seeks them to the committed offsets, and then resumes flow control,
  which empties the stream buffers. Events fetched between the resume and the seek
  (some 5-60 per partition) are emptied with the buffers, the rest of that fetch is
  delivered after them, and the same events fetched again after the seek are dropped
  as already read (below the last offset delivered). Faust records the jump as a gap
  (meant for compacted topics) and counts it acknowledged.

The worker therefore turns Faust's acknowledgements off for its source topic and keeps
the offsets itself, as a sequence per partition:

- the next offset to handle starts at the group's committed offset (or the partition's
  first offset when the group never committed and reads from the earliest);
- an event at that offset is admitted and advances it; an event below it is a
  redelivery and is dropped (it was handled already);
- an event above it is a hole: the missing offsets are read from Kafka directly (a
  plain consumer assigned to the partition, no group) and handled first, in order.
  Offsets no record occupies (a transactional producer's markers) are passed;
- after a batch is handled (outputs and changelog acknowledged by Kafka) the next offset
  of each of its partitions is committed; a batch that fails is rewound (its partitions
  start again from the committed offset).

Nothing is committed that was not handled, and nothing is handled twice in a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Committed = Callable[[list[int]], Awaitable[Mapping[int, int | None]]]
Fill = Callable[[int, int, int], Awaitable[list[Any]]]
Commit = Callable[[Mapping[int, int]], Awaitable[bool]]


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
        ``fill(partition, start, end)``: the partition's events at offsets
        ``start <= offset < end``, read from Kafka, in offset order.
    commit
        Commits ``{partition: next offset}`` for the group; ``False`` when the partitions
        are no longer assigned.
    """

    def __init__(self, topic: str, committed: Committed, fill: Fill, commit: Commit) -> None:
        self.topic = topic
        self._committed, self._fill, self._commit = committed, fill, commit
        self.next: dict[int, int | None] = {}
        self.lock = asyncio.Lock()
        self.redelivered = 0
        self.filled = 0
        self.holes = 0

    async def admit(self, events: list[Any]) -> list[Any]:
        """The events to handle for ``events``, in order; see the module docstring."""
        partitions = {event.message.partition for event in events}
        unknown = sorted(p for p in partitions if p not in self.next)
        if unknown:
            committed = await self._committed(unknown)
            for p in unknown:
                self.next[p] = committed.get(p)
                log.info("%s partition %d starts at %s", self.topic, p, self.next[p])
        admitted: list[Any] = []
        for event in events:
            p, offset = event.message.partition, event.message.offset
            want = self.next[p]
            if want is not None and offset < want:
                self.redelivered += 1
                continue
            if want is not None and offset > want:
                admitted.extend(await self._fill_hole(p, want, offset))
            admitted.append(event)
            self.next[p] = offset + 1
        return admitted

    async def _fill_hole(self, p: int, want: int, offset: int) -> list[Any]:
        missing = await self._fill(p, want, offset)
        offsets = [event.message.offset for event in missing]
        if offsets != sorted(set(offsets)) or any(not want <= o < offset for o in offsets):
            raise RuntimeError(f"{self.topic} partition {p}: read offsets {offsets} for "
                               f"the hole {want}-{offset - 1}")
        self.holes += 1
        self.filled += len(missing)
        log.warning("%s partition %d: offsets %d-%d never reached the stream; read %d "
                    "record(s) of them from Kafka directly", self.topic, p, want,
                    offset - 1, len(missing))
        return missing

    async def commit(self, handled: Iterable[Any]) -> None:
        """Commit the next offset of each partition of a handled batch."""
        offsets: dict[int, int] = {}
        for event in handled:
            p, offset = event.message.partition, event.message.offset
            offsets[p] = max(offsets.get(p, -1), offset + 1)
        if not offsets:
            return
        if await self._commit(offsets):
            log.info("committed %s", {f"{self.topic}:{p}": o for p, o in offsets.items()})
        else:
            log.warning("%s commit of %s refused (partitions reassigned)", self.topic, offsets)

    def rewind(self, partitions: Iterable[int]) -> None:
        """Forget where ``partitions`` stand: the next batch reads the committed offset."""
        for p in partitions:
            self.next.pop(p, None)

    @contextlib.asynccontextmanager
    async def batch(self, events: list[Any]) -> AsyncIterator[list[Any]]:
        """Admit ``events``, let the caller handle them, then commit (or rewind on error)."""
        async with self.lock:
            admitted = await self.admit(events)
            try:
                yield admitted
            except BaseException:
                self.rewind({event.message.partition for event in admitted})
                raise
            await self.commit(admitted)
