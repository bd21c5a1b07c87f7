"""The Faust app: validate, compute features, score through Triton, emit.

The agent is thin: it decodes each event, calls pure functions (``records``,
``features``), and hands micro-batches to Feast and Triton. Scores and dead letters are
produced with confluent-kafka and flushed before the batch is acknowledged, so a source
offset is committed only once its score (or dead letter) is acknowledged by Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import faust
import numpy as np
from confluent_kafka import Producer

from streams.deadletter import dead_letter_headers
from streams.feast_client import TERMINAL_VIEW, OnlineFeatures, open_store
from streams.features import transaction_flags, update_card_history
from streams.metrics import WorkerMetrics
from streams.records import Score, Transaction, ValidationError
from streams.scoring import DecisionPolicy, TritonScorer
from streams.settings import Settings
from streams.topics import SCORES, TRANSACTIONS, TRANSACTIONS_DLQ

log = logging.getLogger(__name__)


@dataclass
class WorkerConfig:
    """How one worker reaches its services and sizes its micro-batches."""

    kafka: str
    redis_url: str
    triton_url: str
    settings: Settings
    app_id: str = "fraud-factory"
    batch_max: int = 1024
    batch_wait_s: float = 0.05
    policy: DecisionPolicy = field(default_factory=DecisionPolicy)
    version_refresh_s: float = 2.0
    offset_reset: str = "earliest"


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


class ScoringPipeline:
    """Everything the agent does with one micro-batch of events."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.producer = Producer({
            **config.settings.kafka.client_config(config.kafka),
            "linger.ms": 5,
            "enable.idempotence": True,
            "message.max.bytes": 2 * 1024 * 1024,
        })
        self.features: OnlineFeatures | None = None
        self.scorer: TritonScorer | None = None
        self.version = 0
        self._version_checked = 0.0

    async def start(self) -> None:
        store = await asyncio.to_thread(open_store, self.config.redis_url)
        self.features = OnlineFeatures(store)
        self.scorer = TritonScorer(self.config.triton_url,
                                   on_error=lambda exc: self.metrics.triton_errors.inc())
        await self.scorer.connect()
        if self.scorer.n_features != len(self.features.order):
            raise RuntimeError(
                f"Triton model takes {self.scorer.n_features} features but the feature "
                f"service gives {len(self.features.order)}: {self.features.order}"
            )
        await self.refresh_version(force=True)
        self.metrics.ready.set(1)

    async def refresh_version(self, force: bool = False) -> None:
        """Route to the newest READY version; checked every ``version_refresh_s``."""
        assert self.scorer is not None
        now = time.monotonic()
        if not force and now - self._version_checked < self.config.version_refresh_s:
            return
        self._version_checked = now
        while True:
            versions = await self.scorer.ready_versions()
            if versions:
                break
            log.warning("no READY version of the model yet; waiting")
            await asyncio.sleep(1.0)
        if versions[-1] != self.version:
            log.info("routing to model version %d", versions[-1])
            self.version = versions[-1]
            self.metrics.model_version.set(self.version)

    def dead_letter(self, event: faust.types.EventT, stage: str, error: BaseException) -> None:
        message = event.message
        self.producer.produce(
            TRANSACTIONS_DLQ,
            value=message.value,
            key=message.key,
            headers=dead_letter_headers(message.topic, message.partition, message.offset,
                                        stage, error),
        )
        self.metrics.dead_lettered.labels(getattr(error, "kind", type(error).__name__)).inc()

    async def process(self, stream: faust.Stream, events: list[faust.types.EventT],
                      card_history: faust.Table) -> None:
        """Validate, featurise, score and emit one micro-batch, then flush the producer."""
        assert self.features is not None and self.scorer is not None
        self.metrics.events_in.inc(len(events))
        self.metrics.batch_size.observe(len(events))
        accepted: list[tuple[Transaction, faust.types.EventT]] = []
        rows: list[list[float]] = []
        for event in events:
            try:
                tx = Transaction.parse(event.message.value)
            except ValidationError as exc:
                self.dead_letter(event, "validate", exc)
                continue
            try:
                # Table writes go to the changelog partition of the current event.
                stream._set_current_event(event)
                key = str(tx.card_id)
                history, card_features = update_card_history(
                    card_history[key], tx.event_time, tx.amount
                )
                card_history[key] = history
            except Exception as exc:  # noqa: BLE001 - a poison event must not stop the worker
                self.dead_letter(event, "features", exc)
                continue
            weekend, night = transaction_flags(tx.event_time)
            rows.append([tx.amount, weekend, night, *card_features])
            accepted.append((tx, event))
        if accepted:
            await self._score(accepted, np.asarray(rows, dtype=np.float64))
        self.producer.poll(0)
        remaining = await asyncio.to_thread(self.producer.flush, 30.0)
        if remaining:
            raise RuntimeError(f"{remaining} messages not acknowledged by Kafka after 30 s")

    async def _score(self, accepted: list[tuple[Transaction, faust.types.EventT]],
                     rows: np.ndarray) -> None:
        assert self.features is not None and self.scorer is not None
        card_ids = np.array([tx.card_id for tx, _ in accepted], dtype=np.int64)
        terminal_ids = np.array([tx.terminal_id for tx, _ in accepted], dtype=np.int64)
        times = np.array([tx.event_time for tx, _ in accepted], dtype=np.float64)
        terminal = await asyncio.to_thread(
            self.features.read, TERMINAL_VIEW, "terminal_id", terminal_ids
        )
        features = np.hstack([rows, terminal])
        # The card view gets each card's latest state of this batch.
        _, last = np.unique(card_ids[::-1], return_index=True)
        last = len(card_ids) - 1 - last
        push = asyncio.to_thread(
            self.features.push_card_activity, card_ids[last], times[last], rows[last, 3:]
        )
        await self.refresh_version()
        version = self.version
        started = time.perf_counter()
        scores, _ = await asyncio.gather(self.scorer.score(features, version), push)
        self.metrics.scoring_latency.observe(time.perf_counter() - started)
        now = time.time()
        policy = self.config.policy
        for (tx, event), score in zip(accepted, scores.tolist(), strict=True):
            appended = event.message.timestamp
            latency = max(0.0, now - appended) if appended else 0.0
            record = Score(tx.tx_id, tx.card_id, tx.event_time, float(score),
                           policy.decide(score), version, round(latency * 1000, 3))
            self.producer.produce(SCORES, value=record.to_json(), key=event.message.key)
            self.metrics.end_to_end_latency.observe(latency)
        self.metrics.scored.inc(len(accepted))


def create_app(config: WorkerConfig, metrics: WorkerMetrics | None = None) -> faust.App:
    """The Faust app of one worker, with its agent and card table."""
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
        datadir=str(settings.state_dir / "faust" / config.app_id),
    )
    transactions = app.topic(TRANSACTIONS, key_serializer="raw", value_serializer="raw")
    card_history = app.Table("card-history", default=list, partitions=settings.partitions,
                             key_type=str, value_type=list)
    pipeline = ScoringPipeline(config, metrics)

    @app.task
    async def start_pipeline() -> None:
        await pipeline.start()

    @app.agent(transactions)
    async def score_transactions(stream: faust.Stream) -> None:
        while pipeline.scorer is None or pipeline.version == 0:
            await asyncio.sleep(0.05)
        async for events in stream.take_events(config.batch_max, within=config.batch_wait_s):
            await pipeline.process(stream, list(events), card_history)

    app.pipeline = pipeline  # type: ignore[attr-defined]
    app.metrics = metrics  # type: ignore[attr-defined]
    return app
