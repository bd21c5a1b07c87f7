"""Source offsets the worker commits itself: in order, per partition, after the work.

Faust 0.15 can lose source messages across a kill -9 and restart. Its consumer reads the
committed offset after restoring the tables, but the first fetch of a restarted worker
sometimes reaches the stream 20 to 600 offsets later on every partition (a fetch that
aiokafka returned while the partitions were being resumed and seeked never reaches the
stream). Faust's drain loop then records the skipped range as a "gap" (meant for
compacted topics and transaction markers) and counts it as acknowledged, so the next
commit passes messages no process ever handled: labels missing from a terminal's counts,
transactions never scored.

The worker therefore turns Faust's acknowledgements off for its source topic and keeps
the offsets itself, as a sequence per partition:

- the next offset to handle starts at the group's committed offset (or the partition's
  first offset when the group never committed and reads from the earliest);
- an event at that offset is admitted and advances it; an event below it is a
  redelivery and is dropped (it was handled already);
- an event above it is a hole: that partition's events are held back (not handled) and
  the consumer is seeked back to the missing offset, again every ``reseek_after_s``
  until the missing event arrives. A hole that a fresh read shows again at the same
  place ``accept_gap_after`` times is a real gap (offsets no record occupies, such as a
  transactional producer's markers) and is passed;
- after a batch is handled (outputs and changelog acknowledged by Kafka) the next offset
  of each of its partitions is committed; a batch that fails is rewound (its partitions
  start again from the committed offset).

Nothing is committed that was not handled, and nothing is handled twice in a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Committed = Callable[[list[int]], Awaitable[Mapping[int, int | None]]]
Seek = Callable[[int, int], Awaitable[None]]
Commit = Callable[[Mapping[int, int]], Awaitable[bool]]


@dataclass
class Hole:
    """A partition whose next event has not arrived although a later one has."""

    want: int
    seen: int
    seeks: int = 0
    last_seek: float = float("-inf")
    repeats: int = 0


class SourceOffsets:
    """Sequencing and commits of one source topic's partitions in one worker.

    Parameters
    ----------
    topic
        The source topic (its name also labels the logs).
    committed
        The group's committed offsets of some partitions (``None`` where there is none;
        the next offset to read otherwise).
    seek
        Moves the consumer of a partition back to an offset.
    commit
        Commits ``{partition: next offset}`` for the group; ``False`` when the partitions
        are no longer assigned.
    """

    def __init__(self, topic: str, committed: Committed, seek: Seek, commit: Commit, *,
                 reseek_after_s: float = 2.0, accept_gap_after: int = 3,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.topic = self.role = topic
        self._committed, self._seek, self._commit = committed, seek, commit
        self.reseek_after_s = reseek_after_s
        self.accept_gap_after = accept_gap_after
        self._clock = clock
        self.next: dict[int, int | None] = {}
        self.holes: dict[int, Hole] = {}
        self.lock = asyncio.Lock()
        self.redelivered = 0
        self.held_back = 0
        self.seeks = 0
        self.gaps_passed = 0

    async def admit(self, events: list[Any]) -> list[Any]:
        """The events of ``events`` to handle now, in order; see the module docstring."""
        partitions = {event.message.partition for event in events}
        unknown = sorted(p for p in partitions if p not in self.next)
        if unknown:
            committed = await self._committed(unknown)
            for p in unknown:
                self.next[p] = committed.get(p)
                log.info("%s partition %d starts at %s", self.role, p, self.next[p])
        admitted: list[Any] = []
        blocked: set[int] = set()
        for event in events:
            p, offset = event.message.partition, event.message.offset
            if p in blocked:
                self.held_back += 1
                continue
            want = self.next[p]
            if want is not None and offset > want and not self._pass_gap(p, want, offset):
                blocked.add(p)
                self.held_back += 1
                continue
            if want is not None and offset < want:
                self.redelivered += 1
                continue
            admitted.append(event)
            self.next[p] = offset + 1
            self.holes.pop(p, None)
        for p in blocked:
            await self._maybe_seek(p)
        return admitted

    def _pass_gap(self, p: int, want: int, offset: int) -> bool:
        """Record a hole; whether a read after a seek showed it at the same place often
        enough to pass it as a real gap."""
        hole = self.holes.get(p)
        if hole is None or hole.want != want:
            self.holes[p] = Hole(want, offset)
            return False
        if offset < hole.seen:  # a read from closer to the hole
            hole.seen, hole.repeats = offset, 0
            return False
        if offset > hole.seen or not hole.seeks:
            return False
        hole.repeats += 1
        if hole.repeats < self.accept_gap_after:
            return False
        log.warning("%s partition %d: offsets %d-%d hold no record after %d seeks; passed",
                    self.role, p, want, offset - 1, hole.seeks)
        self.gaps_passed += 1
        return True

    async def _maybe_seek(self, p: int) -> None:
        hole = self.holes[p]
        now = self._clock()
        if now - hole.last_seek < self.reseek_after_s:
            return
        hole.seeks += 1
        hole.last_seek = now
        self.seeks += 1
        log.warning("%s partition %d: expected offset %d, received %d; seeking back "
                    "(attempt %d)", self.role, p, hole.want, hole.seen, hole.seeks)
        await self._seek(p, hole.want)

    async def reseek(self) -> None:
        """Seek again where a hole waits longer than ``reseek_after_s`` (call on a timer)."""
        async with self.lock:
            for p in list(self.holes):
                await self._maybe_seek(p)

    async def commit(self, handled: Iterable[Any]) -> None:
        """Commit the next offset of each partition of a handled batch."""
        offsets: dict[int, int] = {}
        for event in handled:
            p, offset = event.message.partition, event.message.offset
            offsets[p] = max(offsets.get(p, -1), offset + 1)
        if not offsets:
            return
        if await self._commit(offsets):
            log.info("committed %s", {f"{self.role}:{p}": o for p, o in offsets.items()})
        else:
            log.warning("%s commit of %s refused (partitions reassigned)", self.role, offsets)

    def rewind(self, partitions: Iterable[int]) -> None:
        """Forget where ``partitions`` stand: the next batch reads the committed offset."""
        for p in partitions:
            self.next.pop(p, None)
            self.holes.pop(p, None)

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
