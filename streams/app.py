"""The Faust app: validate, compute features, score through Triton, emit.

A worker has a role. ``score`` reads ``transactions`` (keyed by card): it validates each
event, keeps card windows in a changelog-backed table, reads terminal label state from
Feast, scores micro-batches through Triton, and writes scores, dead letters and the
offline feature log. ``labels`` reads ``labels`` (keyed by terminal): it keeps each
terminal's labels in a changelog-backed table, pushes them to Feast and then advances the
label watermark. ``all`` runs both agents in one process (live mode only: in strict mode
the two must not share one consumer, or a full transactions buffer could hold back the
labels it waits for).

Outputs are produced with confluent-kafka and flushed before a batch counts as handled,
and the worker commits source offsets itself (``streams/offsets.py``, not Faust's
acknowledgements), in order per partition, so a source offset is committed only after
its score (or dead letter) is acknowledged by Kafka, its feature-log part is written and
its table state is in the changelog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faust
from faust.types import TP, Message

from streams.changelog import ChangelogBarrier
from streams.labels import LabelPipeline
from streams.metrics import WorkerMetrics
from streams.offsets import SourceOffsets
from streams.pipeline import ScoringPipeline
from streams.scoring import DecisionPolicy, ReviewBudget
from streams.settings import Settings
from streams.topics import LABELS, TRANSACTIONS

log = logging.getLogger(__name__)

Role = Literal["score", "labels", "all"]
Mode = Literal["live", "strict"]


@dataclass
class WorkerConfig:
    """How one worker reaches its services, what it does, and how it batches."""

    kafka: str
    redis_url: str
    triton_url: str
    settings: Settings
    app_id: str = "fraud-factory"
    role: Role = "all"
    mode: Mode = "live"
    labels_group: str | None = None
    batch_max: int = 1024
    batch_wait_s: float = 0.05
    policy: DecisionPolicy | ReviewBudget = field(default_factory=DecisionPolicy)
    request_rows: int = 1024
    in_flight: int = 4
    version_refresh_s: float = 2.0
    offset_reset: str = "earliest"
    feature_log_dir: Path | None = None
    feast_path: Literal["fast", "sdk"] = "fast"

    def __post_init__(self) -> None:
        if self.role == "all" and self.mode == "strict":
            raise ValueError("strict mode needs separate 'score' and 'labels' workers")

    @property
    def watermark_group(self) -> str:
        """The labels consumer group whose watermark the scorer follows."""
        if self.labels_group:
            return self.labels_group
        return self.app_id if self.role != "score" else f"{self.app_id}-labels"

    @property
    def log_dir(self) -> Path:
        return self.feature_log_dir or self.settings.state_dir / "feature_log"


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


def create_app(config: WorkerConfig, metrics: WorkerMetrics | None = None) -> faust.App:
    """The Faust app of one worker, with the agents and tables of its role."""
    settings = config.settings
    metrics = metrics or WorkerMetrics()
    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.kafka}",
        broker_credentials=_broker_credentials(settings),
        store="memory://",
        value_serializer="json",
        topic_partitions=settings.partitions,
        web_enabled=False,
        consumer_auto_offset_reset=config.offset_reset,
        broker_commit_every=2000,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=8192,
        # A killed worker's partitions move to the others within seconds.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        datadir=str(settings.state_dir / "faust" / config.app_id),
    )
    pipelines: list[ScoringPipeline | LabelPipeline] = []
    sources: list[SourceOffsets] = []

    if config.role in ("score", "all"):
        # acks=False: Faust neither tracks nor commits this topic's offsets; the worker
        # commits them itself once a batch is handled (streams/offsets.py says why).
        transactions = app.topic(TRANSACTIONS, key_serializer="raw", value_serializer="raw",
                                 acks=False)
        transaction_offsets = source_offsets(app, config, TRANSACTIONS)
        sources.append(transaction_offsets)
        # Values are a card's state as raw bytes (streams.features.CARD_DTYPE records):
        # value_type=bytes makes Faust use the "raw" codec for the table and its changelog.
        card_history = app.Table("card-history", default=bytes, key_type=str,
                                 value_type=bytes, partitions=settings.partitions)
        card_changelog = ChangelogBarrier(card_history)
        scoring = ScoringPipeline(config, metrics)
        pipelines.append(scoring)

        @app.agent(transactions)
        async def score_transactions(stream: faust.Stream) -> None:
            await scoring.started.wait()
            async for events in stream.take_events(config.batch_max,
                                                   within=config.batch_wait_s):
                async with transaction_offsets.batch(list(events)) as admitted:
                    if admitted:
                        await scoring.process(stream, admitted, card_history,
                                              card_changelog)

    if config.role in ("labels", "all"):
        labels = app.topic(LABELS, key_serializer="raw", value_serializer="raw", acks=False)
        label_offsets = source_offsets(app, config, LABELS)
        sources.append(label_offsets)
        terminal_labels = app.Table("terminal-labels", default=bytes, key_type=str,
                                    value_type=bytes, partitions=settings.partitions)
        terminal_changelog = ChangelogBarrier(terminal_labels)
        labelling = LabelPipeline(config, metrics)
        pipelines.append(labelling)

        @app.agent(labels)
        async def apply_labels(stream: faust.Stream) -> None:
            await labelling.started.wait()
            async for events in stream.take_events(config.batch_max,
                                                   within=config.batch_wait_s):
                async with label_offsets.batch(list(events)) as admitted:
                    if admitted:
                        await labelling.process(stream, admitted, terminal_labels,
                                                terminal_changelog)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def finish_before_revoke(sender: faust.App, revoked: set[TP], **_: object) -> None:
        # The batch in hand finishes and commits before the partitions move.
        for source in sources:
            async with source.lock:
                source.rewind(tp.partition for tp in revoked if tp.topic == source.topic)

    @app.task
    async def start_pipelines() -> None:
        await asyncio.gather(*(p.start() for p in pipelines))
        metrics.ready.set(1)

    app.pipelines = pipelines  # type: ignore[attr-defined]
    app.metrics = metrics  # type: ignore[attr-defined]
    return app


def source_offsets(app: faust.App, config: WorkerConfig, topic: str) -> SourceOffsets:
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

    def read_range(partition: int, start: int, end: int) -> list[FilledEvent]:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({**settings.kafka.client_config(config.kafka),
                             "group.id": f"{config.app_id}-fill", "enable.auto.commit": False,
                             "auto.offset.reset": "error"})
        found: list[FilledEvent] = []
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
                if record.offset() >= end:
                    return found  # offsets before it hold no record (markers)
                found.append(FilledEvent.of(record))
                if record.offset() == end - 1:
                    return found
            raise TimeoutError(f"reading {topic}:{partition} {start}-{end - 1} took 60 s")
        finally:
            consumer.close()

    async def fill(partition: int, start: int, end: int) -> list[FilledEvent]:
        return await asyncio.to_thread(read_range, partition, start, end)

    async def commit(offsets: Mapping[int, int]) -> bool:
        # The driver's commit of explicit offsets (Faust's public commit() commits only
        # what it tracked as acknowledged, and this topic is not tracked).
        return bool(await app.consumer._commit(  # type: ignore[attr-defined]
            {TP(topic, p): offset for p, offset in offsets.items()}))

    return SourceOffsets(topic, committed, fill, commit)


@dataclass
class FilledEvent:
    """A source record read from Kafka directly to fill a hole, shaped as a Faust event
    for the pipelines (they read ``event.message`` only)."""

    message: Message

    @classmethod
    def of(cls, record: Any) -> FilledEvent:
        """From a confluent-kafka message."""
        _, stamp = record.timestamp()
        return cls(Message(
            record.topic(), record.partition(), record.offset(),
            stamp / 1000.0 if stamp and stamp > 0 else 0.0, 0, record.headers() or [],
            record.key(), record.value(), None))
