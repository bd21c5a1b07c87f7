"""Faust's Kafka transport with one change: the high-rate topics are delivered in batches.

Registered under the URL scheme ``batching://`` through Faust's documented transport
entry point (``faust.transports`` in ``pyproject.toml``). Everything else is Faust's
aiokafka transport: the consumer group, partition assignment, rebalance and recovery,
the producer, and the per-event delivery of every other topic to its agents.

:class:`BatchingConsumer` overrides the consumer's fetch loop (``_drain_messages``, the
one method of Faust's consumer that walks the fetched records) so that the records of a
topic with a :class:`streams.dataplane.batches.BatchBuffer` go to that buffer, one fetched
partition at a time, and never become Faust events; the records of other topics take
Faust's own per-message path, exactly as in Faust's loop.

Why a subclass: Faust has no hook on fetched records; a custom transport is its documented seam.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import IllegalStateError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from streams.dataplane.batches import BatchBuffer


class BatchingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, handing the batched topics' records to their buffers."""

    fetch_linger_below = 1000
    """After a fetch of fewer records than this, the loop waits ``app.fetch_linger_s``
    (half the micro-batch wait, 1-50 ms) before the next fetch: records gather in the
    client's fetch buffer instead of coming a few at a time. At 1,000 events/s a 3 ms
    linger took the broker from 727 to 603 µs of CPU an event; a worker whose batches
    wait 0.5 s gains nothing from fetching every 3 ms."""

    def fetch_linger_s(self) -> float:
        return float(getattr(self.app, "fetch_linger_s", 0.003))

    def batch_buffers(self) -> dict[str, BatchBuffer]:
        return getattr(self.app, "batch_buffers", {})

    async def commit_source(self, offsets: Mapping[TP, int]) -> bool:
        """Commit explicit offsets for the group (the worker's own source offsets); Faust's
        ``commit()`` commits only what it tracked as acknowledged, and the batched topics
        are not tracked. ``False`` when the partitions are no longer assigned."""
        return bool(await self._commit(offsets))

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - needs Kafka
        callback = self.callback
        buffers = self.batch_buffers()
        consumer_stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                await asyncio.sleep(0)
                records, active = await self._wait_next_records(1.0)
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    # As Faust's getmany: fetched while the flow stopped (a rebalance);
                    # go back to the committed offsets.
                    try:
                        await self.perform_seek()
                    except IllegalStateError:
                        # The next rebalance took a partition while its committed offset
                        # was being read (workers joining at once): the new assignment
                        # starts its partitions from their committed offsets anyway.
                        pass
                    continue
                fetched = sum(len(r) for r in records.values())
                generation = self.app.consumer_generation_id
                for tp, tp_records in records.items():
                    if self.app.consumer_generation_id != generation or not self.flow_active:
                        break  # a rebalance began: the rest is read again after it
                    if not (active is None or tp in active
                            or tp in self._buffered_partitions):
                        continue
                    buffer = buffers.get(tp.topic)
                    if buffer is not None:
                        await buffer.put(tp.partition, tp_records)
                        continue
                    for record in tp_records:
                        message = self._to_message(tp, record)
                        read = get_read_offset(tp)
                        if read is not None and message.offset < read:
                            continue
                        if (read and message.offset - read > 1
                                and acks_enabled_for(message.topic)):
                            await self._add_gap(tp, read + 1, message.offset)
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, message.offset)
                if fetched < self.fetch_linger_below:
                    # A small fetch: let records gather in the client's fetch buffer
                    # before asking again (fewer fetches, hand-offs and wake-ups).
                    await asyncio.sleep(self.fetch_linger_s())
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with :class:`BatchingConsumer`."""

    Consumer = BatchingConsumer
