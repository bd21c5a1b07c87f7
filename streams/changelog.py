"""Wait until a Faust table's changelog writes are acknowledged by Kafka.

A worker must not let a batch's offsets be committed before that batch's table state is
in the changelog, or a kill -9 after the commit restores a state that lacks it (and the
events that built it are not redelivered). Faust commits only after
``app.producer.flush()``, but that flush is not a barrier: Faust queues table writes in
a ``ProducerBuffer`` that a background task hands to the Kafka client one by one, and
``ProducerBuffer.flush`` gives up as soon as 0.1 s pass without a message leaving the
queue. On a loaded machine it returns with writes still queued, the commit goes ahead,
and a kill -9 loses them (seen as terminal labels missing after a restart, and as
redelivered transactions whose card features differ from the first delivery).

:class:`ChangelogBarrier` counts the table's changelog writes and the delivery callbacks
Kafka's acknowledgements trigger, and :meth:`ChangelogBarrier.wait` flushes until every
write made so far is acknowledged. A batch's source offsets are committed only after its
``process`` returns (``streams/offsets.py``), so no offset is committed before its state
is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from faust import streams as faust_streams

log = logging.getLogger(__name__)


class ChangelogBarrier:
    """Counts one table's changelog writes and their acknowledgements.

    It wraps the table's ``send_changelog`` (every write, whatever sets the key) and the
    ``_on_changelog_sent`` callback Faust attaches to each write and calls once Kafka
    acknowledged it.
    """

    def __init__(self, table: Any) -> None:
        self.written = 0
        self.acknowledged = 0
        send, on_sent = table.send_changelog, table._on_changelog_sent

        def counted_send(*args: Any, **kwargs: Any) -> Any:
            self.written += 1
            return send(*args, **kwargs)

        def counted_ack(fut: Any) -> None:
            self.acknowledged += 1
            on_sent(fut)

        # send_changelog reads self._on_changelog_sent at each call, so the instance
        # attributes take effect for every later write.
        table.send_changelog = counted_send
        table._on_changelog_sent = counted_ack

    @property
    def pending(self) -> int:
        """Writes made and not yet acknowledged."""
        return self.written - self.acknowledged

    async def wait(self, producer: Any, warn_after_s: float = 30.0) -> None:
        """Flush ``producer`` (the app's) until every write made so far is acknowledged.

        Waits as long as it takes: while Kafka cannot take the writes the batch is not
        acknowledged, so nothing is lost; a warning is logged every ``warn_after_s``.
        """
        target = self.written
        started = warned = time.monotonic()
        while self.acknowledged < target:
            await producer.flush()
            if self.acknowledged >= target:
                return
            await asyncio.sleep(0.002)
            now = time.monotonic()
            if now - warned >= warn_after_s:
                warned = now
                log.warning("%d changelog writes not acknowledged after %.0f s",
                            target - self.acknowledged, now - started)


def write_as(event: Any) -> None:
    """Make the table writes that follow go to ``event``'s partition (its changelog).

    Faust tables read the event being processed from a context variable. This sets only
    that variable: ``Stream._set_current_event`` also sets ``Stream.current_event``,
    which ``take_events``' buffer reads for the next event it adds, after waiting for
    the batch in hand to be processed; set from the batch, it put an event of the
    previous batch in place of the new one, so the new one was never processed (one
    event lost at a batch boundary now and then, found by the worker's own source
    offsets, ``streams/offsets.py``).
    """
    faust_streams._current_event.set(weakref.ref(event))


def offset_ranges(events: list[Any]) -> dict[int, tuple[int, int]]:
    """``{partition: (first offset, last offset)}`` of a batch's events."""
    ranges: dict[int, tuple[int, int]] = {}
    for event in events:
        message = event.message
        low, high = ranges.get(message.partition, (message.offset, message.offset))
        ranges[message.partition] = (min(low, message.offset), max(high, message.offset))
    return ranges


def log_batch(role: str, events: list[Any]) -> None:
    """At INFO: the offsets a batch covers (with the commits ``streams/offsets.py`` logs,
    what a restart test needs to tell "never processed" from "committed past")."""
    if log.isEnabledFor(logging.INFO):
        log.info("%s batch of %d: %s", role, len(events), offset_ranges(events))
