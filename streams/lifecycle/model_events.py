"""The retrainer's outputs besides the model repository: ``model-events`` records and its
Prometheus metrics.

Every record is a JSON object with ``v`` and ``event`` (``drift_check``,
``drift_detected``, ``retrain_started``, ``retrain_failed``, ``challenger_rejected``,
``challenger_accepted``, ``shadow_started``, ``promoted``, ``rollback_check``,
``rollback``, ``unloaded``) and the figures of that step; ``factory_model_events_total``
counts them by event.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from models.drift_decisions import MONITORS, DriftDecision, DriftMetrics
from models.simulator import SECONDS_PER_DAY
from streams.lifecycle.retrain_policy import DriftLatch
from streams.settings import Settings
from streams.topics import MODEL_EVENTS

log = logging.getLogger(__name__)

ALERTED_EVENTS = ("drift_detected", "retrain_started", "challenger_rejected",
                  "challenger_accepted", "shadow_started", "promoted", "rollback", "unloaded")
"""Events whose counter series exist from the start, so ``increase()`` sees the first."""

STAGES = ("train", "gate", "shadow", "swap", "cycle")


class RetrainerMetrics:
    """The retrainer's gauges and counters on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 drift_hold_seconds: float = SECONDS_PER_DAY) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("factory_model_events", "Records published on model-events",
                              ["event"], registry=r)
        for event in ALERTED_EVENTS:
            self.events.labels(event=event)
        self.model_version = Gauge("factory_model_version",
                                   "Champion version the retrainer routes to", registry=r)
        self.drift = DriftMetrics(r)
        for monitor in MONITORS:
            self.drift.detected.labels(monitor=monitor).set(0)
        self.latch = DriftLatch(drift_hold_seconds)
        self.seconds = Gauge("factory_retrain_seconds",
                             "Wall seconds of the latest retraining, by stage "
                             "(train, gate, shadow, swap, cycle: drift to promotion)",
                             ["stage"], registry=r)
        for stage in STAGES:
            self.seconds.labels(stage=stage)
        self.retraining = Gauge("factory_retrain_in_progress",
                                "1 while a retraining or swap runs", registry=r)
        self.event_time = Gauge("factory_retrainer_event_time_seconds",
                                "Latest logged event time the retrainer has read (Unix s)",
                                registry=r)

    def drift_update(self, decisions: Iterable[DriftDecision], now: float) -> None:
        """Set the drift gauges; a detection stays 1 as :class:`DriftLatch` holds it."""
        decisions = list(decisions)
        if decisions:
            self.drift.update(decisions)
        for monitor, value in self.latch.update(decisions, now).items():
            self.drift.detected.labels(monitor=monitor).set(value)

    def drift_clear(self) -> None:
        """The model that answers the drift serves: lower every alarm."""
        for monitor, value in self.latch.clear().items():
            self.drift.detected.labels(monitor=monitor).set(value)


def _clean(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python, non-finite floats as null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ModelEvents:
    """Publishes records on ``model-events`` (or only keeps them, without a broker).

    ``sent`` keeps every record of this process in order, for tests and summaries.
    """

    def __init__(self, bootstrap: str | None, settings: Settings | None = None,
                 metrics: RetrainerMetrics | None = None, topic: str = MODEL_EVENTS) -> None:
        self.topic = topic
        self.metrics = metrics
        self.sent: list[dict[str, Any]] = []
        self.producer = None
        if bootstrap is not None:
            from streams.clients.kafka_io import producer

            self.producer = producer(bootstrap, settings or Settings(), **{"linger.ms": 5})

    def publish(self, event: str, *, flush: bool = True, **fields: Any) -> dict[str, Any]:
        """Publish ``{"v": 1, "event": event, "at": wall time, **fields}``."""
        return self.publish_record({"event": event, "v": 1, **fields}, flush=flush)

    def publish_record(self, record: dict[str, Any], *, flush: bool = True) -> dict[str, Any]:
        """Publish a record that already names its ``event``."""
        record = _clean({**record, "at": record.get("at", time.time())})
        self.sent.append(record)
        if self.metrics is not None:
            self.metrics.events.labels(event=record["event"]).inc()
        if record["event"] != "drift_check":
            log.info("model event %s", json.dumps(record)[:400])
        if self.producer is not None:
            self.producer.produce(self.topic, json.dumps(record).encode())
            self.producer.poll(0)
            if flush:
                self.flush()
        return record

    def flush(self, timeout_s: float = 10.0) -> None:
        if self.producer is not None and self.producer.flush(timeout_s) != 0:
            log.warning("model-events: some records were not acknowledged in %.0f s", timeout_s)

    def close(self) -> None:
        """Flush and let the producer go (librdkafka stops when it is collected)."""
        self.flush()
        self.producer = None
