"""The Faust app: validate, compute features, score through Triton, emit.

Faust is the stream processor and the app: the worker's lifecycle, the consumer group,
partition assignment and rebalances. The high-rate topics (``transactions``,
``labels``) are read beneath its per-event path: its consumer hands their fetched
records to a buffer a topic (``streams/dataplane/transport.py``,
``streams/dataplane/batches.py``) and a
batch loop a topic handles them as columns and checkpoints them
(``streams/dataplane/checkpoint.py``), with the card and terminal state kept by the worker and
changelogged through confluent-kafka (``streams/dataplane/state.py``).

A worker has a role. ``score`` reads ``transactions`` (keyed by card): it validates each
event, keeps card windows in a changelog-backed table, reads terminal label state from
Feast, scores micro-batches through Triton, and writes scores, dead letters and the
offline feature log. ``labels`` reads ``labels`` (keyed by terminal): it keeps each
terminal's labels in a changelog-backed table, pushes them to Feast and then advances the
label watermark. ``all`` runs both agents in one process (live mode only: in strict mode
the two must not share one consumer, or a full transactions buffer could hold back the
labels it waits for).

Outputs are produced with confluent-kafka and flushed at each checkpoint, and the worker
commits source offsets itself (``streams/dataplane/offsets.py``, not Faust's acknowledgements), in
order per partition, so a source offset is committed only after its score (or dead
letter) is acknowledged by Kafka, its feature-log rows are written and its state is in
the changelog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP

from streams.clients.kafka_access import KafkaNeeds
from streams.dataplane.batches import BatchBuffer, RecordBatch
from streams.dataplane.checkpoint import BatchLoop
from streams.dataplane.config import WorkerConfig
from streams.dataplane.emit import Emitter
from streams.dataplane.labels import LabelPipeline
from streams.dataplane.metrics import WorkerMetrics
from streams.dataplane.offsets import SourceOffsets
from streams.dataplane.pipeline import ScoringPipeline
from streams.dataplane.state import ChangelogState, changelog_topic, ensure_changelog
from streams.settings import Settings
from streams.topics import LABELS, SCORES, TRANSACTIONS, TRANSACTIONS_DLQ

log = logging.getLogger(__name__)

_STATES = {TRANSACTIONS: "card-state", LABELS: "terminal-state"}


def kafka_needs(config: WorkerConfig) -> KafkaNeeds:
    """What a worker of ``config``'s role reads, writes and joins on Kafka: its source
    topics, its outputs (dead letters, and scores for a scorer), its changelogs, its
    consumer group and the helper groups that read its offsets and changelogs."""
    sources = {"score": [TRANSACTIONS], "labels": [LABELS]}.get(config.role,
                                                                [TRANSACTIONS, LABELS])
    changelogs = [changelog_topic(config.app_id, _STATES[topic]) for topic in sources]
    outputs = [TRANSACTIONS_DLQ, *([SCORES] if TRANSACTIONS in sources else [])]
    groups = [config.app_id, f"{config.app_id}-fill", f"{config.app_id}-ends",
              *(f"{topic}-restore" for topic in changelogs)]
    return KafkaNeeds(read=(*sources, *changelogs), write=(*outputs, *changelogs),
                      groups=tuple(groups))


def _broker_credentials(settings: Settings):  # noqa: ANN202 - faust credential types
    kafka = settings.kafka
    if kafka.security_protocol == "PLAINTEXT":
        return None
    import ssl

    context = ssl.create_default_context(cafile=kafka.ssl_ca_location)
    if kafka.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get() if kafka.sasl_password else None,
            ssl_context=context if kafka.security_protocol == "SASL_SSL" else None,
            mechanism=kafka.sasl_mechanism or "PLAIN",
        )
    return faust.SSLCredentials(context)


class FactoryApp(faust.App):
    """Faust's app with the batch buffers of the high-rate topics, which its consumer
    (``streams.dataplane.transport.BatchingConsumer``) fills."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batch_buffers: dict[str, BatchBuffer] = {}
        self.batch_loops: list[BatchLoop] = []
        self.pipelines: list[ScoringPipeline | LabelPipeline] = []
        self.metrics: WorkerMetrics | None = None
        self.fetch_linger_s = 0.003

    async def on_stop(self) -> None:
        """A clean stop checkpoints what was handled (the batch in hand finishes first),
        so a stopped worker leaves nothing for its successor to handle again.

        A strict batch that waits for labels not yet produced is left unfinished: the
        last checkpoint stands, and the successor handles that batch again.
        """
        for loop in self.batch_loops:
            while not getattr(loop.pipeline, "waiting_for_labels", False):
                try:
                    await asyncio.wait_for(loop.lock.acquire(), timeout=0.2)
                except TimeoutError:
                    continue
                try:
                    await loop.checkpoint()
                finally:
                    loop.lock.release()
                break
        await super().on_stop()


def create_app(config: WorkerConfig, metrics: WorkerMetrics | None = None) -> FactoryApp:
    """The Faust app of one worker, with the batch loops of its role."""
    settings = config.settings
    metrics = metrics or WorkerMetrics()
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = FactoryApp(
        config.app_id,
        broker=f"batching://{config.kafka}",
        broker_credentials=_broker_credentials(settings),
        store="memory://",
        value_serializer="json",
        topic_partitions=settings.partitions,
        web_enabled=False,
        consumer_auto_offset_reset=config.offset_reset,
        # Fetches of up to 10,000 records, 1 MiB a partition: a fetch fills a batch.
        broker_max_poll_records=10_000,
        consumer_max_fetch_size=1024 * 1024,
        broker_commit_interval=1.0,
        # A killed worker's partitions move to the others within seconds (a static
        # member's wait for it to come back instead).
        broker_session_timeout=config.session_timeout_s,
        broker_heartbeat_interval=2.0,
        consumer_group_instance_id=config.group_instance_id,
        datadir=str(settings.state_dir / "faust" / config.app_id),
    )
    app.metrics = metrics
    app.fetch_linger_s = min(0.05, max(0.001, config.batch_wait_s / 2))
    client_config = settings.kafka.client_config(config.kafka)
    emitter = Emitter(config.kafka, settings, metrics)

    def batched(topic_name: str, state_name: str,
                make: type[ScoringPipeline] | type[LabelPipeline]) -> None:
        # acks=False: Faust neither tracks nor commits this topic's offsets; the worker
        # commits them itself at each checkpoint (streams/dataplane/offsets.py says why).
        topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw",
                          acks=False)
        app.topics.add(topic)  # subscribed: Faust's group assigns its partitions
        buffer = app.batch_buffers[topic_name] = BatchBuffer(
            topic_name, capacity=max(4 * config.batch_max, 20_000))
        state = ChangelogState(changelog_topic(config.app_id, state_name), client_config)
        pipeline = make(config, metrics, emitter, state, app.consumer)
        app.pipelines.append(pipeline)
        app.batch_loops.append(BatchLoop(
            buffer, source_offsets(app, config, topic_name), pipeline, state, emitter,
            metrics, batch_max=config.batch_max, batch_wait_s=config.batch_wait_s,
            commit_interval_s=config.commit_interval_s))

    if config.role in ("score", "all"):
        batched(TRANSACTIONS, _STATES[TRANSACTIONS], ScoringPipeline)
    if config.role in ("labels", "all"):
        batched(LABELS, _STATES[LABELS], LabelPipeline)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def finish_before_revoke(sender: faust.App, revoked: set[TP], **_: object) -> None:
        # What was handled is checkpointed before the partitions move.
        for loop in app.batch_loops:
            await loop.on_revoked([tp.partition for tp in revoked if tp.topic == loop.topic])
            metrics.partitions_owned.labels(loop.topic).set(len(loop.buffer.owned))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def take_assigned(sender: faust.App, assigned: set[TP], **_: object) -> None:
        metrics.rebalances.inc()
        for loop in app.batch_loops:
            loop.on_assigned([tp.partition for tp in assigned if tp.topic == loop.topic])
            metrics.partitions_owned.labels(loop.topic).set(len(loop.buffer.owned))

    @app.task
    async def run_batch_loops() -> None:
        for loop in app.batch_loops:
            await asyncio.to_thread(ensure_changelog, client_config, loop.state.topic,
                                    settings.partitions)
        await asyncio.gather(*(p.start() for p in app.pipelines))
        metrics.ready.set(1)
        await asyncio.gather(*(loop.run() for loop in app.batch_loops))

    return app


def source_offsets(app: FactoryApp, config: WorkerConfig, topic: str) -> SourceOffsets:
    """:class:`SourceOffsets` of ``topic`` for the worker's group, through ``app``'s consumer."""
    settings = config.settings

    def read_committed(partitions: list[int]) -> dict[int, int | None]:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({**settings.kafka.client_config(config.kafka),
                             "group.id": config.app_id, "enable.auto.commit": False})
        try:
            found = consumer.committed([TopicPartition(topic, p) for p in partitions],
                                       timeout=30)
            starts: dict[int, int | None] = {}
            for tp in found:
                if tp.offset >= 0:
                    starts[tp.partition] = tp.offset
                elif config.offset_reset == "earliest":
                    low, _ = consumer.get_watermark_offsets(tp, timeout=30)
                    starts[tp.partition] = low
                else:
                    starts[tp.partition] = None
            return starts
        finally:
            consumer.close()

    async def committed(partitions: list[int]) -> dict[int, int | None]:
        return await asyncio.to_thread(read_committed, partitions)

    def read_range(partition: int, start: int, end: int) -> RecordBatch:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({**settings.kafka.client_config(config.kafka),
                             "group.id": f"{config.app_id}-fill", "enable.auto.commit": False,
                             "auto.offset.reset": "error"})
        found: list[FilledRecord] = []
        try:
            consumer.assign([TopicPartition(topic, partition, start)])
            deadline = time.monotonic() + 60.0
            while time.monotonic() < deadline:
                record = consumer.poll(1.0)
                if record is None:
                    continue
                if record.error() is not None:
                    raise RuntimeError(f"reading {topic}:{partition} {start}-{end - 1}: "
                                       f"{record.error()}")
                offset = record.offset()
                assert offset is not None  # a record without an error has an offset
                if offset >= end:
                    break  # offsets before it hold no record (markers)
                found.append(FilledRecord.of(record))
                if offset == end - 1:
                    break
            else:
                raise TimeoutError(f"reading {topic}:{partition} {start}-{end - 1} took 60 s")
            return RecordBatch.of_records(topic, found)
        finally:
            consumer.close()

    async def fill(partition: int, start: int, end: int) -> RecordBatch:
        return await asyncio.to_thread(read_range, partition, start, end)

    def read_ends(partitions: list[int]) -> dict[int, int]:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({**settings.kafka.client_config(config.kafka),
                             "group.id": f"{config.app_id}-ends", "enable.auto.commit": False})
        try:
            return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                    for p in partitions}
        finally:
            consumer.close()

    async def ends(partitions: list[int]) -> dict[int, int]:
        return await asyncio.to_thread(read_ends, partitions)

    async def commit(offsets: Mapping[int, int]) -> bool:
        return await app.consumer.commit_source(  # type: ignore[attr-defined]
            {TP(topic, p): offset for p, offset in offsets.items()})

    return SourceOffsets(topic, committed, fill, commit, ends)


@dataclass
class FilledRecord:
    """A source record read from Kafka directly to fill a hole, with the fields
    :meth:`RecordBatch.of_records` reads."""

    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, record: Any) -> FilledRecord:
        """From a confluent-kafka message."""
        _, stamp = record.timestamp()
        return cls(record.partition(), record.offset(), stamp if stamp and stamp > 0 else 0,
                   record.key(), record.value())
