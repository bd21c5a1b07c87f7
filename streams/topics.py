"""The factory's topics, created with explicit partition counts."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, NewTopic

from streams.settings import Settings

TRANSACTIONS = "transactions"
TRANSACTIONS_DLQ = "transactions-dlq"
SCORES = "scores"
LABELS = "labels"
MODEL_EVENTS = "model-events"
FEEDBACK = "feedback"
"""Investigators' verdicts: the true labels of the transactions of the cards they
reviewed, the day they reviewed them (the label record's format)."""


def topic_partitions(partitions: int) -> dict[str, int]:
    """Partition count of each topic; the keyed streams share one count so they co-partition."""
    return {
        TRANSACTIONS: partitions,
        TRANSACTIONS_DLQ: 1,
        SCORES: partitions,
        LABELS: partitions,
        MODEL_EVENTS: 1,
        FEEDBACK: 1,
    }


def ensure_topics(settings: Settings, bootstrap: str, partitions: int | None = None) -> None:
    """Create any missing topic; an existing topic is left as it is."""
    admin = AdminClient({**settings.kafka.client_config(bootstrap), "log_level": 0})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = topic_partitions(partitions or settings.partitions)
    new = [
        NewTopic(name, num_partitions=count, replication_factor=1)
        for name, count in wanted.items()
        if name not in existing
    ]
    if not new:
        return
    for name, future in admin.create_topics(new, operation_timeout=10).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"creating topic {name!r} failed: {exc}") from exc
