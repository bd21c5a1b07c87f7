"""The Faust app: validate, compute features, score through Triton, emit.

A worker has a role. ``score`` reads ``transactions`` (keyed by card): it validates each
event, keeps card windows in a changelog-backed table, reads terminal label state from
Feast, scores micro-batches through Triton, and writes scores, dead letters and the
offline feature log. ``labels`` reads ``labels`` (keyed by terminal): it keeps each
terminal's labels in a changelog-backed table, pushes them to Feast and then advances the
label watermark. ``all`` runs both agents in one process (live mode only: in strict mode
the two must not share one consumer, or a full transactions buffer could hold back the
labels it waits for).

Outputs are produced with confluent-kafka and flushed before Faust acknowledges a batch,
so a source offset is committed only after its score (or dead letter) is acknowledged by
Kafka and its feature-log part is written.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import faust

from streams.changelog import ChangelogBarrier, trace_commits
from streams.labels import LabelPipeline
from streams.metrics import WorkerMetrics
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

    if config.role in ("score", "all"):
        transactions = app.topic(TRANSACTIONS, key_serializer="raw", value_serializer="raw")
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
                await scoring.process(stream, list(events), card_history, card_changelog)

    if config.role in ("labels", "all"):
        labels = app.topic(LABELS, key_serializer="raw", value_serializer="raw")
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
                await labelling.process(stream, list(events), terminal_labels,
                                        terminal_changelog)

    @app.task
    async def start_pipelines() -> None:
        trace_commits(app)
        await asyncio.gather(*(p.start() for p in pipelines))
        metrics.ready.set(1)

    app.pipelines = pipelines  # type: ignore[attr-defined]
    app.metrics = metrics  # type: ignore[attr-defined]
    return app
