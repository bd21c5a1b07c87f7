"""The batch loop of one high-rate topic: micro-batches in, checkpoints out.

Each micro-batch is admitted in offset order (``streams/dataplane/offsets.py``), its partitions'
state restored from the changelog when they are new to this worker
(``streams/dataplane/state.py``), and handled by the topic's pipeline, which produces its outputs
without waiting for them. Every ``commit_interval_s`` (or ``commit_every`` records), and
before partitions are revoked or the worker stops, a **checkpoint**:

1. one changelog record a key changed since the last checkpoint is produced;
2. the producer is flushed once (scores, dead letters and changelog records all
   acknowledged by Kafka) while the feature-log rows kept since the last checkpoint are
   written (one part an event date);
3. the next offset of every partition handled is committed.

Steps 2 and 3 run beside the batches that follow (a flush and a parquet write take tens
of milliseconds, which a stalled loop would add to every event's latency); those batches
belong to the next checkpoint, which starts only once this one is done.

So no offset is committed before its outputs, state and feature-log rows are durable, and
the checkpoint has the shape of one Kafka transaction (outputs, changelog and offsets
together) should exactly-once be wanted. A batch or checkpoint that fails discards the
state and rows not yet checkpointed and rewinds every partition to its committed offset:
the records are handled again (at least once; ``tx_id`` is the idempotency key).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

import numpy as np

from streams.dataplane.batches import BatchBuffer, RecordBatch
from streams.dataplane.emit import Emitter
from streams.dataplane.metrics import WorkerMetrics
from streams.dataplane.offsets import SourceOffsets
from streams.dataplane.state import ChangelogState

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    started: asyncio.Event

    async def start(self) -> None: ...

    async def process(self, batch: RecordBatch) -> None: ...

    def cut(self) -> Any: ...

    async def persist(self, rows: Any) -> None: ...

    def discard(self) -> None: ...


class BatchLoop:
    """Takes one topic's micro-batches from its buffer and checkpoints them."""

    def __init__(self, buffer: BatchBuffer, offsets: SourceOffsets, pipeline: Pipeline,
                 state: ChangelogState, emitter: Emitter, metrics: WorkerMetrics, *,
                 batch_max: int, batch_wait_s: float, commit_interval_s: float = 1.0,
                 commit_every: int = 50_000) -> None:
        self.buffer = buffer
        self.offsets = offsets
        self.pipeline = pipeline
        self.state = state
        self.emitter = emitter
        self.metrics = metrics
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.commit_interval_s = commit_interval_s
        self.commit_every = commit_every
        self.lock = asyncio.Lock()
        self.pending: dict[int, int] = {}
        self.pending_records = 0
        self.last_checkpoint = time.monotonic()
        self.failures = 0
        self._in_flight: asyncio.Task[None] | None = None
        self._caught_up: set[int] = set()
        self._caught_up_checked = float("-inf")  # never: the first check is due at once
        self._store_checked = float("-inf")
        self._persist_failing_since: float | None = None

    @property
    def topic(self) -> str:
        return self.buffer.topic

    async def run(self) -> None:
        await self.pipeline.started.wait()
        while True:
            if self._held_back():
                # A checkpoint that cannot write its feature-log rows (a full disk) holds
                # the loop: batches taken now would only pile up uncommitted.
                assert self._in_flight is not None  # held back only by a checkpoint in flight
                await asyncio.wait({self._in_flight}, timeout=self.commit_interval_s)
                continue
            try:
                batch = await asyncio.wait_for(
                    self.buffer.take(self.batch_max, self.batch_wait_s),
                    self.commit_interval_s)
            except TimeoutError:
                batch = None
            async with self.lock:
                if self._failed_checkpoint():
                    continue
                if batch is not None and len(batch):
                    await self._handle(batch)
                if self._waiting_to_catch_up():
                    await self._mark_caught_up()
                await self._check_store()
                if self.pending and self._in_flight is None and (
                        self.pending_records >= self.commit_every
                        or time.monotonic() - self.last_checkpoint >= self.commit_interval_s):
                    self._in_flight = asyncio.create_task(self._checkpoint(*self._cut()))

    def _held_back(self) -> bool:
        """Whether the checkpoint in flight has been retrying its feature-log write for
        longer than two commit intervals."""
        task = self._in_flight
        return (task is not None and not task.done() and self._persist_failing_since is not None
                and time.monotonic() - self._persist_failing_since > 2 * self.commit_interval_s)

    async def _persist(self, rows: Any) -> None:
        """The pipeline's write of the checkpoint's rows, retried in place while it fails
        for want of room or of a writable disk (``OSError``): the scores are already on
        their topic, so handling the batches again would only produce them again; nothing
        is committed until the rows are written."""
        pause = 0.2
        while True:
            try:
                await self.pipeline.persist(rows)
            except OSError as exc:
                if self._persist_failing_since is None:
                    self._persist_failing_since = time.monotonic()
                    log.error("%s: the feature log cannot be written (%s); retrying, and "
                              "nothing is committed until it is", self.topic, exc)
                    self.metrics.feature_log_blocked.set(1)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            if self._persist_failing_since is not None:
                log.warning("%s: the feature log is written again after %.1f s", self.topic,
                            time.monotonic() - self._persist_failing_since)
                self._persist_failing_since = None
                self.metrics.feature_log_blocked.set(0)
            return

    async def _handle(self, batch: RecordBatch) -> None:
        try:
            admitted = await self.offsets.admit(batch)
            if not len(admitted):
                return
            partitions = np.unique(admitted.partition).tolist()
            new = [p for p in partitions if not self.state.owns(p)]
            if new:
                clock = time.perf_counter()
                await asyncio.to_thread(self.state.restore, new)
                self.metrics.stage("restore_state", clock)
            await self.pipeline.process(admitted)
        except Exception:
            log.exception("%s batch failed; handling it again from the committed offsets",
                          self.topic)
            self.failures += 1
            await self._reset()
            await asyncio.sleep(min(5.0, 0.1 * 2 ** min(self.failures, 6)))
            return
        self.failures = 0
        self._caught_up.update(partitions)  # its batch marked it
        for p, offset in admitted.next_offsets().items():
            self.pending[p] = max(self.pending.get(p, 0), offset)
        self.pending_records += len(admitted)

    async def _reset(self) -> None:
        """Forget everything not checkpointed: state, kept rows, positions."""
        if self._in_flight is not None:
            await asyncio.gather(self._in_flight, return_exceptions=True)
            self._in_flight = None
        self._reset_now()

    def _failed_checkpoint(self) -> bool:
        """Whether the checkpoint in flight failed; the loop is reset for it (the batches
        since the last good checkpoint are handled again)."""
        task = self._in_flight
        if task is None or not task.done():
            return False
        self._in_flight = None
        if task.cancelled() or task.exception() is None:
            return False
        log.error("%s checkpoint failed (%s); handling its batches again", self.topic,
                  task.exception())
        self._reset_now()
        return True

    def _waiting_to_catch_up(self) -> bool:
        """Whether an owned partition is still to be checked (at most once a commit
        interval)."""
        if not self.buffer.owned - self._caught_up:
            return False
        now = time.monotonic()
        if now - self._caught_up_checked < self.commit_interval_s:
            return False
        self._caught_up_checked = now
        return True

    async def _mark_caught_up(self) -> None:
        """While no batch comes: tell the pipeline of each owned partition whose every
        record is handled (its position is the end of the partition), once after each
        assignment, with the partition's state (restored first when needed)."""
        caught_up = getattr(self.pipeline, "caught_up", None)
        waiting = [p for p in sorted(self.buffer.owned) if p not in self._caught_up]
        if caught_up is None or self.offsets.ends is None or not waiting:
            return
        ends = await self.offsets.ends(waiting)
        positions = await self.offsets.positions(waiting)
        for p in waiting:
            position = positions[p]
            if position is None or position < ends.get(p, 0):
                continue
            if not self.state.owns(p):
                await asyncio.to_thread(self.state.restore, [p])
            caught_up(p, self.state.table(p))
            self._caught_up.add(p)

    async def _check_store(self) -> None:
        """Once a commit interval: each owned partition whose state the online store does
        not hold (``pipeline.store_missing``, :mod:`streams.dataplane.store_marks`) has its whole
        table pushed again (``pipeline.restore_store``), its state restored first."""
        missing_of = getattr(self.pipeline, "store_missing", None)
        now = time.monotonic()
        if (missing_of is None or not self.buffer.owned
                or now - self._store_checked < self.commit_interval_s):
            return
        self._store_checked = now
        try:
            missing = await asyncio.to_thread(missing_of, sorted(self.buffer.owned))
            for p in missing:
                if not self.state.owns(p):
                    await asyncio.to_thread(self.state.restore, [p])
                clock = time.perf_counter()
                await asyncio.to_thread(self.pipeline.restore_store,  # type: ignore[attr-defined]
                                        p, self.state.table(p))
                self.metrics.stage("restore_online_store", clock)
        except Exception:  # noqa: BLE001 - Redis may be down; checked again next interval
            log.exception("%s: checking the online store failed; trying again", self.topic)

    def _reset_now(self) -> None:
        """Forget everything not checkpointed (no checkpoint in flight)."""
        every = sorted(set(self.state.partitions) | set(self.offsets.next)
                       | set(self.pending))
        self.state.discard_staged(every)
        self.offsets.rewind(every)
        self.pipeline.discard()
        self.pending, self.pending_records = {}, 0

    def _cut(self) -> tuple[dict[int, int], int, Any]:
        """What the next checkpoint covers: the offsets handled so far, their changelog
        records (produced now) and their feature-log rows."""
        self.last_checkpoint = time.monotonic()
        offsets, self.pending, self.pending_records = self.pending, {}, 0
        changed = self.state.checkpoint(self.emitter.changelog)
        return offsets, changed, self.pipeline.cut()

    async def _checkpoint(self, offsets: dict[int, int], changed: int, rows: Any) -> None:
        """One flush with the feature-log write, then the offsets. Runs beside the batches
        that follow (they are in the next checkpoint); raises when anything failed."""
        clock = time.perf_counter()
        await asyncio.gather(self.emitter.flush(), self._persist(rows))
        clock = self.metrics.stage("checkpoint_flush", clock)
        await self.offsets.commit_offsets(offsets)
        self.metrics.stage("checkpoint_commit", clock)
        self.metrics.checkpoints.labels(self.topic).inc()
        self.metrics.changelog_records.labels(self.topic).inc(changed)

    async def checkpoint(self) -> None:
        """Checkpoint everything handled so far and wait for it (a revoke, a stop). Call
        with :attr:`lock` held."""
        if self._in_flight is not None:
            task, self._in_flight = self._in_flight, None
            try:
                await task
            except Exception:  # noqa: BLE001
                log.exception("%s checkpoint failed; handling its batches again", self.topic)
                self._reset_now()
                return
        if not self.pending:
            return
        try:
            await self._checkpoint(*self._cut())
        except Exception:  # noqa: BLE001
            log.exception("%s checkpoint failed; handling its batches again", self.topic)
            self._reset_now()

    async def on_revoked(self, partitions: list[int]) -> None:
        """Checkpoint what was handled, then let the partitions go."""
        async with self.lock:
            await self.checkpoint()
            self.buffer.drop(partitions)
            self.offsets.rewind(partitions)
            self.state.drop(partitions)
            self._caught_up.difference_update(partitions)

    def on_assigned(self, partitions: list[int]) -> None:
        assigned = getattr(self.pipeline, "assigned", None)
        if assigned is not None:
            assigned(partitions)
        self.buffer.assign(partitions)

    def describe(self) -> dict[str, Any]:
        return {"topic": self.topic, "pending": dict(self.pending),
                "owned": sorted(self.buffer.owned)}
