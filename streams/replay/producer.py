"""The replay producer: a transaction table into ``transactions``, its labels into ``labels``.

A dataset (simulated, optionally with drift, or a parquet file) is replayed in event-time
order, each transaction keyed by card id. The label of a transaction at event time ``t``
is produced when the replay clock (the event time of the transactions sent so far)
passes ``known_at = t + delay``, and only once the transactions that moved the clock
there are acknowledged by Kafka, so that no label is appended before the transaction
whose event time reaches its ``known_at``. Labels are keyed by **terminal id**: their
consumer keeps terminal risk state, which then lives in the partition of its terminal.
Labels still pending at the end of the dataset are flushed (``--no-flush-labels`` keeps
them back).

Progress, a checkpoint of where the replay stands (next row, label position; keyed by a
fingerprint of the dataset's content, under ``<state_dir>/producer/``) and pacing on event
time (``--speed N`` is N times real time) are handled here; ``factory replay``
(:mod:`streams.replay.cli`) calls :func:`replay`.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from streams.replay.dataset import (
    Checkpoint,
    Dataset,
    LabelSchedule,
    Progress,
    paced_end,
)
from streams.settings import Settings
from streams.topics import LABELS, TRANSACTIONS

DeliveryCallback = Callable[[object, object], None]


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay: speed (None = max), limit of rows this run, labels, topics."""

    speed: float | None = None
    limit: int | None = None
    labels: bool = True
    flush_labels: bool = True
    resume: bool = False
    transactions_topic: str = TRANSACTIONS
    labels_topic: str = LABELS
    chunk_rows: int = 20_000
    checkpoint_every_s: float = 10.0
    progress: bool = True
    # Event time (Unix s) to start at: earlier transactions were sent before (by
    # ``factory bootstrap``), and so were their labels known by the last of them.
    start_time: int | None = None


@dataclass
class ReplayReport:
    """What one replay run did."""

    start_row: int
    next_row: int
    rows: int
    labels_sent: int
    label_position: int
    wall_s: float
    finished: bool

    @property
    def sent(self) -> int:
        return self.next_row - self.start_row

    @property
    def events_per_s(self) -> float:
        return self.sent / self.wall_s if self.wall_s > 0 else 0.0


class _Acks:
    """Delivery reports of one chunk of transactions."""

    __slots__ = ("end_row", "clock", "pending", "errors")

    def __init__(self, end_row: int, clock: int, count: int, errors: list[str]) -> None:
        self.end_row, self.clock, self.pending, self.errors = end_row, clock, count, errors

    def ack(self, err: object, _msg: object) -> None:
        self.pending -= 1
        if err is not None:
            self.errors.append(str(err))


def replay(dataset: Dataset, bootstrap: str, settings: Settings,
           options: ReplayOptions = ReplayOptions(),
           stop: Callable[[], bool] | None = None) -> ReplayReport:
    """Replay ``dataset`` to Kafka; see the module docstring for the guarantees.

    ``stop`` is asked between chunks; when it answers True the replay settles (every
    message acknowledged, due labels sent, checkpoint saved) and returns, so that a
    resumed run continues exactly where this one stopped. The checkpoint is also saved
    every ``checkpoint_every_s``; after a crash a resumed run starts from there and
    may repeat what was sent since (at least once).

    Raises
    ------
    RuntimeError
        When Kafka refuses or does not acknowledge a message; the checkpoint keeps
        the last position that was fully acknowledged.
    """
    from streams.clients.kafka_io import producer

    checkpoint = Checkpoint(settings.state_dir, dataset.fingerprint())
    n = len(dataset)
    schedule = (LabelSchedule.build(dataset.event_time, dataset.delay_s)
                if options.labels and dataset.is_fraud is not None else None)
    saved_position = checkpoint.load() if options.resume else None
    start_row, label_pos = saved_position or (0, 0)
    if options.start_time is not None and saved_position is None:
        start_row, label_pos = start_at(dataset, schedule, options.start_time)
    if options.resume and options.progress:
        print(f"resuming at row {start_row:,}, label {label_pos:,}" if saved_position
              else f"no checkpoint in {checkpoint.path.parent} for this dataset; starting "
              "at row 0", file=sys.stderr)
    stop_row = n if options.limit is None else min(n, start_row + options.limit)
    info = {"rows": n, "bootstrap": bootstrap, "transactions_topic": options.transactions_topic,
            "labels_topic": options.labels_topic}
    client = producer(bootstrap, settings, **{
        "linger.ms": 50, "batch.size": 4_000_000, "batch.num.messages": 100_000,
        "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 1_048_576,
        "enable.idempotence": True,
    })
    errors: list[str] = []
    progress = Progress(stop_row - start_row, options.progress)
    pending: deque[_Acks] = deque()
    next_row, labels_sent, clock = start_row, 0, 0
    began = time.monotonic()
    saved = began

    def send(topic: str, keys: list[bytes], values: list[bytes],
             callback: DeliveryCallback) -> None:
        produce = client.produce
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    produce(topic, value, key, on_delivery=callback)
                    break
                except BufferError:
                    client.poll(0.05)
        client.poll(0)

    def label_error(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    def send_labels(end: int) -> None:
        nonlocal label_pos, labels_sent
        assert schedule is not None
        if end > label_pos:
            send(options.labels_topic, *dataset.encode_labels(schedule.rows[label_pos:end]),
                 label_error)
            labels_sent += end - label_pos
            label_pos = end

    def release_labels() -> None:
        while pending and pending[0].pending == 0:
            done = pending.popleft()
            if schedule is not None:
                send_labels(schedule.due_end(label_pos, done.clock, done.end_row))
        if errors:
            raise RuntimeError(f"Kafka refused messages: {errors[:3]}")

    def settle() -> None:
        """Wait for every acknowledgement, send the due labels, save the checkpoint."""
        if client.flush(120) != 0:
            raise RuntimeError("Kafka did not acknowledge every message within 120 s")
        release_labels()
        if options.flush_labels and schedule is not None and next_row == n:
            send_labels(len(schedule.rows))
        if client.flush(120) != 0 or errors:
            raise RuntimeError(f"Kafka did not acknowledge every label: {errors[:3]}")
        checkpoint.save(next_row, label_pos, **info)

    try:
        origin = int(dataset.event_time[start_row]) if start_row < n else 0
        while next_row < stop_row and not (stop is not None and stop()):
            end, wait = paced_end(dataset.event_time, next_row,
                                  min(stop_row, next_row + options.chunk_rows), origin,
                                  time.monotonic() - began, options.speed)
            if end == next_row:
                client.poll(min(wait, 0.1))
                release_labels()
                continue
            clock = int(dataset.event_time[end - 1])
            acks = _Acks(end, clock, end - next_row, errors)
            pending.append(acks)
            send(options.transactions_topic, *dataset.encode_transactions(next_row, end),
                 acks.ack)
            next_row = end
            release_labels()
            progress.show(next_row - start_row, labels_sent, clock)
            if time.monotonic() - saved > options.checkpoint_every_s:
                settle()
                saved = time.monotonic()
        settle()
    except KeyboardInterrupt:
        client.flush(10)
        raise
    finally:
        progress.show(next_row - start_row, labels_sent, clock, final=True)
    return ReplayReport(start_row, next_row, n, labels_sent, label_pos,
                        time.monotonic() - began, finished=next_row == n)


def start_at(dataset: Dataset, schedule: LabelSchedule | None,
             start_time: int) -> tuple[int, int]:
    """Row and label position of a replay that starts at event time ``start_time``.

    Everything before it was sent by an earlier replay of the rows before it that ended
    without flushing labels (``factory bootstrap``): its transactions, and the labels
    known by the last of them. The labels of those rows known later are still to come,
    at their time.
    """
    row = int(np.searchsorted(dataset.event_time, start_time, side="left"))
    if schedule is None or row == 0:
        return row, 0
    last = int(dataset.event_time[row - 1])
    return row, int(np.searchsorted(schedule.due, last, side="right"))


def ensure_replay_topics(settings: Settings, bootstrap: str, names: Sequence[str]) -> None:
    """Create the factory's topics, and ``names`` with the same partition count, if missing."""
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.topics import ensure_topics, topic_partitions

    ensure_topics(settings, bootstrap)
    admin = AdminClient({**settings.kafka.client_config(bootstrap), "log_level": 0})
    existing = set(admin.list_topics(timeout=10).topics)
    new = [NewTopic(name, num_partitions=settings.partitions, replication_factor=1)
           for name in set(names) - existing - set(topic_partitions(1))]
    for name, future in (admin.create_topics(new, operation_timeout=10).items() if new else ()):
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"creating topic {name!r} failed: {exc}") from exc
