"""The factory's topics, created with explicit partition counts, and what its Kafka user
may do with them."""

from __future__ import annotations

from infra.local.kafka import KafkaLayout, create_missing_topics
from infra.local.kafka_security import AclRule
from streams.settings import Settings

TRANSACTIONS = "transactions"
TRANSACTIONS_DLQ = "transactions-dlq"
SCORES = "scores"
LABELS = "labels"
MODEL_EVENTS = "model-events"
FEEDBACK = "feedback"
"""Investigators' verdicts: the true labels of the transactions of the cards they
reviewed, the day they reviewed them (the label record's format)."""

FACTORY_TOPICS = (TRANSACTIONS, LABELS, SCORES, TRANSACTIONS_DLQ, MODEL_EVENTS, FEEDBACK)
APP_PREFIXES = ("fraud-factory", "factory-", "loop-")
"""Names the factory's consumer groups begin with (the workers' ``--app-id``:
``fraud-factory``, ``fraud-factory-labels``, a run's ``loop-<id>`` and ``factory-<id>``,
the retrainer's ``factory-retrainer``), and so do their own topics: changelogs
(``<app-id>-card-state-changelog``) and Faust's ``<app-id>-__assignor-__leader``."""
READER_GROUP_PREFIXES = ("reader-", "offsets-")
"""The groups of ``streams.clients.kafka_io.consume`` and ``topic_end_offsets`` (assigned
readers: they fetch and commit nothing through the group)."""

TOPIC_OPERATIONS = ("CREATE", "DESCRIBE", "DESCRIBE_CONFIGS", "READ", "WRITE")
GROUP_OPERATIONS = ("DESCRIBE", "READ")


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


def factory_acl_rules() -> list[AclRule]:
    """What the factory's user may do, and nothing more.

    Its five topics: create (``factory up``, a worker's first start), read and write
    (workers, replay, retrainer), describe. Its own topics and consumer groups, by
    prefix: the workers' changelogs and Faust's leader topic are created by the worker
    that owns them. Idempotent producers need no cluster right since Kafka 3.0 (WRITE
    on a topic is enough) and nothing of the factory is transactional.
    """
    rules = [AclRule("TOPIC", topic, "LITERAL", op)
             for topic in FACTORY_TOPICS for op in TOPIC_OPERATIONS]
    rules += [AclRule("TOPIC", prefix, "PREFIXED", op)
              for prefix in APP_PREFIXES for op in TOPIC_OPERATIONS]
    rules += [AclRule("GROUP", prefix, "PREFIXED", op)
              for prefix in (*APP_PREFIXES, *READER_GROUP_PREFIXES) for op in GROUP_OPERATIONS]
    return rules


def kafka_layout(partitions: int) -> KafkaLayout:
    """The factory's topics and its user's ACLs, as the local stack creates and grants them."""
    return KafkaLayout(topic_partitions(partitions), tuple(factory_acl_rules()))


def ensure_topics(settings: Settings, bootstrap: str, partitions: int | None = None) -> None:
    """Create any missing topic; an existing topic is left as it is."""
    create_missing_topics(settings.kafka.client_config(bootstrap),
                          topic_partitions(partitions or settings.partitions))
