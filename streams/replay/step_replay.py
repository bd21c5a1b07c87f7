"""A replay that moves on event time only when it is told to (the loop's event clock).

``factory run --clock event`` replays a day, waits until that day is scored and the
retrainer has acted on it (monitors, retraining, the gate, the swap), and only then
replays the next: the retrainer's wall time no longer decides which events the new model
scores, so the same command gives the same figures on any machine.

Labels go out in the order they become known and never before their transaction, as in
:func:`streams.replay.producer.replay`. A strict scorer scores an event at ``t`` once every labels
partition has applied a label known after ``t`` (:mod:`streams.dataplane.watermark`); at the end of
a step the newest events are waiting for exactly that, so the step also sends the labels
known a little after its last event (:meth:`StepReplay.send_more_labels`). That changes no
feature: an event's terminal features count only the labels known by its own time.
"""

from __future__ import annotations

import numpy as np

from streams.replay.dataset import Dataset, LabelSchedule
from streams.settings import Settings
from streams.topics import FEEDBACK, LABELS, TRANSACTIONS


class StepReplay:
    """Transactions before an event time, with the labels known by then, on request."""

    def __init__(self, dataset: Dataset, bootstrap: str, settings: Settings) -> None:
        from streams.clients.kafka_io import producer

        self.dataset = dataset
        self.schedule = LabelSchedule.build(dataset.event_time, dataset.delay_s)
        self.client = producer(bootstrap, settings, **{"enable.idempotence": True,
                                                       "linger.ms": 5})
        self.next_row = 0
        self.label_pos = 0
        self.errors: list[str] = []

    def _error(self, err: object, _msg: object) -> None:
        if err is not None:
            self.errors.append(str(err))

    def _send(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    self.client.produce(topic, value, key, on_delivery=self._error)
                    break
                except BufferError:
                    self.client.poll(0.05)
        self.client.poll(0)

    def _flush(self) -> None:
        if self.client.flush(120) != 0 or self.errors:
            raise RuntimeError(f"Kafka did not acknowledge every message: {self.errors[:3]}")

    def _send_labels(self, end: int) -> int:
        if end <= self.label_pos:
            return 0
        self._send(LABELS, *self.dataset.encode_labels(self.schedule.rows[self.label_pos:end]))
        sent, self.label_pos = end - self.label_pos, end
        return sent

    def send_before(self, event_time: float, lookahead_s: float = 0.0) -> np.ndarray:
        """Send the transactions before ``event_time`` not sent yet, then the labels known
        by ``event_time`` plus ``lookahead_s`` (of transactions sent: the newest events
        need a later label on every partition); returns the rows sent."""
        end = int(np.searchsorted(self.dataset.event_time, event_time, side="left"))
        rows = np.arange(self.next_row, end)
        if end > self.next_row:
            self._send(TRANSACTIONS, *self.dataset.encode_transactions(self.next_row, end))
            self.next_row = end
            self._flush()  # the transactions before their labels
        self._send_labels(self.schedule.due_end(self.label_pos,
                                                int(event_time + lookahead_s) - 1,
                                                self.next_row))
        self._flush()
        return rows

    def send_feedback(self, rows: np.ndarray, known_at: float) -> int:
        """Investigators' verdicts: the labels of ``rows`` on the ``feedback`` topic,
        known at ``known_at``; how many went."""
        if not len(rows):
            return 0
        keys, values = self.dataset.encode_labels(rows, np.full(len(rows), float(known_at)))
        self._send(FEEDBACK, keys, values)
        self._flush()
        return len(rows)

    def send_more_labels(self, count: int) -> int:
        """The next ``count`` labels of transactions already sent; how many went."""
        due = self.schedule.due_end(self.label_pos, int(self.schedule.due[-1]), self.next_row)
        sent = self._send_labels(min(due, self.label_pos + count))
        self._flush()
        return sent

    def finish(self) -> int:
        """Every transaction and every label still to send."""
        self.send_before(float(self.dataset.event_time[-1]) + 1)
        sent = self._send_labels(len(self.schedule.rows))
        self._flush()
        return sent

    @property
    def done(self) -> bool:
        return self.next_row >= len(self.dataset) and self.label_pos >= len(self.schedule.rows)
