"""Prometheus metrics of the stream worker."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class WorkerMetrics:
    """The worker's counters and histograms, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter("factory_events_in", "Transactions read", registry=r)
        self.scored = Counter("factory_events_scored", "Transactions scored", registry=r)
        self.dead_lettered = Counter(
            "factory_events_dead_lettered", "Events sent to the dead-letter topic",
            ["reason"], registry=r,
        )
        self.scoring_latency = Histogram(
            "factory_scoring_latency_seconds", "Triton call latency per micro-batch",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "factory_end_to_end_latency_seconds", "Event append to score produce",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0),
            registry=r,
        )
        self.batch_size = Histogram(
            "factory_batch_size", "Events a micro-batch",
            buckets=(1, 8, 32, 128, 512, 1024, 2048, 4096), registry=r,
        )
        self.triton_errors = Counter(
            "factory_triton_errors", "Failed Triton calls (retried)", registry=r
        )
        self.triton_endpoint_requests = Counter(
            "factory_triton_endpoint_requests", "Triton requests answered, by endpoint "
            "(host:port)", ["endpoint"], registry=r,
        )
        self.triton_endpoint_failures = Counter(
            "factory_triton_endpoint_failures", "Failed Triton attempts and health probes, by "
            "endpoint (each request retried on another endpoint or later)", ["endpoint"],
            registry=r,
        )
        self.triton_endpoint_up = Gauge(
            "factory_triton_endpoint_up", "1 while a Triton endpoint takes requests, 0 while "
            "it is skipped after a failure (probed again with backoff)", ["endpoint"],
            registry=r,
        )
        self.triton_failed_requests = Counter(
            "factory_triton_failed_requests", "Triton requests that failed on every endpoint "
            "worth trying, so that their batch waited (each is retried with backoff until it "
            "succeeds)", registry=r,
        )
        self.stage_seconds = Counter(
            "factory_stage_seconds", "Wall seconds spent in each stage of the micro-batches",
            ["stage"], registry=r,
        )
        self.labels_in = Counter("factory_labels_in", "Labels read", registry=r)
        self.label_watermark = Gauge(
            "factory_label_watermark_seconds",
            "Known time (event time, Unix s) up to which labels are applied, per partition",
            ["partition"], registry=r,
        )
        self.waiting_for_labels = Gauge(
            "factory_waiting_for_labels",
            "1 while a strict batch waits for the labels known by its last event",
            registry=r,
        )
        self.feature_log_blocked = Gauge(
            "factory_feature_log_blocked",
            "1 while the checkpoint cannot write the feature log (a full disk): nothing is "
            "committed and no new batch is taken until it can", registry=r,
        )
        self.waiting_for_state = Gauge(
            "factory_waiting_for_lost_state",
            "1 while scoring waits for shared state that Redis lost to be restored: the "
            "model route, or the terminal label state of the online store",
            ["state"], registry=r,
        )
        for state in ("route", "labels"):
            self.waiting_for_state.labels(state).set(0)
        self.label_staleness = Gauge(
            "factory_label_staleness_seconds",
            "Event time of the latest scored transaction minus the label watermark "
            "(-1 before every labels partition has a mark)",
            registry=r,
        )
        self.ready = Gauge(
            "factory_worker_ready", "1 once the worker can score (Feast, Triton, model)",
            registry=r,
        )
        self.partitions_owned = Gauge(
            "factory_partitions_owned", "Input partitions this worker owns in its consumer "
            "group", ["topic"], registry=r,
        )
        self.rebalances = Counter(
            "factory_partition_assignments", "Partition assignments this worker received "
            "(one a rebalance of its group)", registry=r,
        )
        self.consumer_lag = Gauge(
            "factory_consumer_lag", "Events behind the end of an input partition, after "
            "the latest micro-batch", ["topic", "partition"], registry=r,
        )
        self.decisions = Counter(
            "factory_decisions", "Decisions made on scored transactions", ["decision"],
            registry=r,
        )
        self.shadow_scored = Counter(
            "factory_shadow_scored", "Transactions also scored by a shadow version",
            registry=r,
        )
        self.checkpoints = Counter(
            "factory_checkpoints", "Checkpoints: changelog, outputs and feature log flushed, "
            "then source offsets committed", ["topic"], registry=r,
        )
        self.changelog_records = Counter(
            "factory_changelog_records", "State changelog records produced (one a changed "
            "key a checkpoint)", ["topic"], registry=r,
        )
        self.model_version = Gauge(
            "factory_model_version", "Model version serving", registry=r
        )

    def observe_lag(self, consumer, batch) -> None:  # noqa: ANN001 - faust consumer
        """Set ``factory_consumer_lag`` for the partitions of a batch from the consumer's
        high-water marks (best effort: a consumer that cannot tell is skipped)."""
        from faust.types import TP

        for partition, (_, last) in batch.offset_ranges().items():
            tp = TP(batch.topic, partition)
            try:
                highwater = consumer.highwater(tp)
            except Exception:  # noqa: BLE001, S112
                continue
            if highwater is not None:
                self.consumer_lag.labels(tp.topic, str(partition)).set(
                    max(0, int(highwater) - last - 1))

    def stage(self, name: str, since: float) -> float:
        """Count the seconds since ``since`` towards stage ``name``; returns now."""
        now = time.perf_counter()
        self.stage_seconds.labels(name).inc(now - since)
        return now
