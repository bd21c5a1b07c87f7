"""Record batches of the high-rate topics, handed from the consumer's fetch to a batch loop.

Faust's per-event path (an ``Event`` a message through the conductor, the stream buffer
and the acknowledgement bookkeeping) costs about 288 µs of CPU a message on a 2-core
machine, 80 times the fetch beneath it. The high-rate topics (``transactions``,
``labels``) therefore reach the pipelines as :class:`RecordBatch` columns: the consumer
(``streams.dataplane.transport``) puts each fetched partition's records into the topic's
:class:`BatchBuffer`, and the topic's loop takes micro-batches from it.

A micro-batch closes when it holds ``max_records`` records or when its oldest record has
waited ``within`` seconds in the buffer: at low load a record waits a few milliseconds,
at high load the batches grow to their maximum.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class RecordBatch:
    """Records of one topic as columns, in the order they were fetched (offset order within
    each partition)."""

    topic: str
    partition: np.ndarray
    offset: np.ndarray
    timestamp: np.ndarray
    """The record's Kafka timestamp in seconds (0 when it has none)."""
    key: list[bytes | None]
    value: list[bytes | None]

    def __len__(self) -> int:
        return len(self.offset)

    @classmethod
    def empty(cls, topic: str) -> RecordBatch:
        return cls(topic, np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0),
                   [], [])

    @classmethod
    def of_records(cls, topic: str, records: Sequence[Any]) -> RecordBatch:
        """From records with ``partition``, ``offset``, ``timestamp`` (ms), ``key``, ``value``
        attributes (aiokafka's ``ConsumerRecord``)."""
        n = len(records)
        return cls(
            topic,
            np.fromiter((r.partition for r in records), np.int32, n),
            np.fromiter((r.offset for r in records), np.int64, n),
            np.fromiter((r.timestamp or 0 for r in records), np.float64, n) / 1000.0,
            [r.key for r in records],
            [r.value for r in records],
        )

    @classmethod
    def concat(cls, topic: str, parts: Sequence[RecordBatch]) -> RecordBatch:
        if not parts:
            return cls.empty(topic)
        if len(parts) == 1:
            return parts[0]
        return cls(
            topic,
            np.concatenate([p.partition for p in parts]),
            np.concatenate([p.offset for p in parts]),
            np.concatenate([p.timestamp for p in parts]),
            [k for p in parts for k in p.key],
            [v for p in parts for v in p.value],
        )

    def take(self, rows: np.ndarray | Sequence[int]) -> RecordBatch:
        """The records at ``rows`` (indices or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        keys, values = self.key, self.value
        return RecordBatch(self.topic, self.partition[rows], self.offset[rows],
                           self.timestamp[rows], [keys[i] for i in rows.tolist()],
                           [values[i] for i in rows.tolist()])

    def offset_ranges(self) -> dict[int, tuple[int, int]]:
        """``{partition: (first offset, last offset)}``."""
        ranges: dict[int, tuple[int, int]] = {}
        for p in np.unique(self.partition).tolist():
            offsets = self.offset[self.partition == p]
            ranges[p] = (int(offsets.min()), int(offsets.max()))
        return ranges

    def next_offsets(self) -> dict[int, int]:
        """``{partition: last offset + 1}``: what a commit of this batch records."""
        return {p: high + 1 for p, (_, high) in self.offset_ranges().items()}


class BatchBuffer:
    """A bounded buffer of one topic's fetched records, taken as micro-batches.

    ``put`` waits while the buffer holds ``capacity`` records or more, which holds the
    fetch loop back (and, through it, the fetch): the same back-pressure Faust's stream
    buffers give. Records of partitions the worker does not own (revoked, or fetched
    before a rebalance) are dropped at ``put`` and by :meth:`drop`.
    """

    def __init__(self, topic: str, capacity: int = 50_000) -> None:
        self.topic = topic
        self.capacity = capacity
        self.owned: set[int] = set()
        self._parts: deque[tuple[float, RecordBatch]] = deque()
        self._size = 0
        self._arrived = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()

    def __len__(self) -> int:
        return self._size

    async def put(self, partition: int, records: Sequence[Any]) -> None:
        """Add one fetched partition's records (aiokafka ``ConsumerRecord`` objects)."""
        while self._size >= self.capacity:
            self._drained.clear()
            await self._drained.wait()
        if partition not in self.owned or not records:
            return
        self.add(RecordBatch.of_records(self.topic, records))

    def add(self, batch: RecordBatch) -> None:
        """Add records already in columns (no ownership check)."""
        if not len(batch):
            return
        self._parts.append((time.monotonic(), batch))
        self._size += len(batch)
        self._arrived.set()

    def assign(self, partitions: Iterable[int]) -> None:
        self.owned.update(partitions)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget ``partitions``: no longer owned, their buffered records discarded."""
        gone = set(partitions)
        self.owned -= gone
        kept: deque[tuple[float, RecordBatch]] = deque()
        for arrived, part in self._parts:
            mask = ~np.isin(part.partition, list(gone))
            if mask.all():
                kept.append((arrived, part))
            elif mask.any():
                kept.append((arrived, part.take(mask)))
        self._parts = kept
        self._size = sum(len(part) for _, part in kept)
        if self._size < self.capacity:
            self._drained.set()

    async def take(self, max_records: int, within: float) -> RecordBatch:
        """The next micro-batch: at most ``max_records``, closed once it is full or its
        oldest record has waited ``within`` seconds; waits for the first record."""
        while not self._parts:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._parts[0][0] + within
        while self._size < max_records:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        taken: list[RecordBatch] = []
        count = 0
        while self._parts and count < max_records:
            arrived, part = self._parts.popleft()
            room = max_records - count
            if len(part) > room:
                self._parts.appendleft((arrived, part.take(np.arange(room, len(part)))))
                part = part.take(np.arange(room))
            taken.append(part)
            count += len(part)
        self._size -= count
        if self._size < self.capacity:
            self._drained.set()
        batch = RecordBatch.concat(self.topic, taken)
        # Records of a partition revoked while they waited are dropped here too.
        if len(batch) and not np.isin(batch.partition, list(self.owned)).all():
            batch = batch.take(np.isin(batch.partition, list(self.owned)))
        return batch
