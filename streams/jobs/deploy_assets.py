"""The Kubernetes objects made from the factory's own sources, one source each.

Kustomize reads only files inside a kustomization's folder, so what the cluster needs
from the rest of the project is written into ``infra/k8s/base/generated/`` by this
module, never by hand:

- ``prometheus-rule.yaml``: a ``PrometheusRule`` whose groups are
  ``infra/prometheus/factory-rules.yml`` (the file ``promtool`` tests);
- ``kafka-topics.yaml``: a Strimzi ``KafkaTopic`` for each topic of
  :func:`streams.topics.topic_partitions`, with the cluster's partition count;
- ``kafka-users.yaml``: the ``KafkaUser`` of the factory with exactly the ACLs of
  :func:`streams.topics.factory_acl_rules` (those the local secured broker enforces),
  and KEDA's, which may only describe the workers' topics and groups;
- ``fraud-factory.json`` and ``feature_store.yaml``: copies of the Grafana dashboard and
  of Feast's repository configuration, for the ConfigMaps;

and ``infra/k8s/components/redis-cluster/feature_store.yaml``: Feast's configuration with
``redis_type: redis_cluster``, for the component that puts the online store on a Redis
Cluster.

    python -m streams.jobs.deploy_assets            # write them again after editing a source
    python -m streams.jobs.deploy_assets --check    # exit 1 when a committed one differs

``tests/infra/test_k8s.py`` runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from streams.settings import REPO_ROOT
from streams.topics import LABELS, TRANSACTIONS, factory_acl_rules, topic_partitions

K8S = REPO_ROOT / "infra" / "k8s"
GENERATED = K8S / "base" / "generated"
REDIS_CLUSTER = K8S / "components" / "redis-cluster"
RULES = REPO_ROOT / "infra" / "prometheus" / "factory-rules.yml"
DASHBOARD = REPO_ROOT / "infra" / "grafana" / "dashboards" / "fraud-factory.json"
FEATURE_STORE = REPO_ROOT / "feature_repo" / "feature_store.yaml"

KAFKA_CLUSTER = "factory-kafka"
"""The Strimzi ``Kafka`` resource of infra/k8s/base/kafka.yaml."""
PARTITIONS = 8
"""Partitions of the keyed topics on the cluster: the most workers a role can use (the
KEDA replica cap) and the workers' ``FACTORY_PARTITIONS``."""
REPLICAS = 3
"""Replicas of every topic (three brokers, ``min.insync.replicas`` 2)."""
FACTORY_USER = "factory"
KEDA_USER = "factory-keda"
HEADER = ("# Made by `python -m streams.jobs.deploy_assets` from {source}: do not edit.\n")


def _dump(objects: list[dict[str, Any]]) -> str:
    return "---\n".join(yaml.safe_dump(o, sort_keys=False, width=100) for o in objects)


def prometheus_rule() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "fraud-factory"},
        "spec": {"groups": groups},
    }
    return HEADER.format(source="infra/prometheus/factory-rules.yml") + _dump([rule])


def kafka_topics() -> str:
    topics = []
    for name, count in topic_partitions(PARTITIONS).items():
        topics.append({
            "apiVersion": "kafka.strimzi.io/v1beta2",
            "kind": "KafkaTopic",
            "metadata": {"name": name, "labels": {"strimzi.io/cluster": KAFKA_CLUSTER}},
            "spec": {"partitions": count, "replicas": REPLICAS,
                     "config": {"min.insync.replicas": 2}},
        })
    return HEADER.format(source="streams/topics.py") + _dump(topics)


def _acl(resource: str, name: str, pattern: str, operations: list[str]) -> dict[str, Any]:
    # Kafka's LITERAL and PREFIXED are Strimzi's literal and prefix.
    pattern_type = {"LITERAL": "literal", "PREFIXED": "prefix"}[pattern]
    return {
        "resource": {"type": resource.lower(), "name": name, "patternType": pattern_type},
        "operations": [op.replace("_", " ").title().replace(" ", "") for op in operations],
    }


def kafka_users() -> str:
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for rule in factory_acl_rules():
        grouped.setdefault((rule.resource, rule.name, rule.pattern), []).append(rule.operation)
    factory_acls = [_acl(r, n, p, ops) for (r, n, p), ops in grouped.items()]
    keda_acls = [_acl("TOPIC", topic, "LITERAL", ["DESCRIBE"])
                 for topic in (TRANSACTIONS, LABELS)]
    keda_acls.append(_acl("GROUP", "fraud-factory", "PREFIXED", ["DESCRIBE"]))
    users = []
    for name, acls in ((FACTORY_USER, factory_acls), (KEDA_USER, keda_acls)):
        users.append({
            "apiVersion": "kafka.strimzi.io/v1beta2",
            "kind": "KafkaUser",
            "metadata": {"name": name, "labels": {"strimzi.io/cluster": KAFKA_CLUSTER}},
            "spec": {
                "authentication": {"type": "scram-sha-512"},
                "authorization": {"type": "simple", "acls": acls},
            },
        })
    return HEADER.format(source="streams/topics.py") + _dump(users)


def cluster_feature_store() -> str:
    """Feast's configuration with the online store on a Redis Cluster."""
    text = FEATURE_STORE.read_text()
    online = "online_store:\n  type: redis\n"
    if text.count(online) != 1:
        raise ValueError(f"{FEATURE_STORE} has no '{online.strip()}' block to extend")
    return ("# Made by `python -m streams.jobs.deploy_assets` from "
            "feature_repo/feature_store.yaml\n# (redis_type redis_cluster added): do not edit.\n"
            + text.replace(online, online + "  redis_type: redis_cluster\n"))


def assets() -> dict[Path, str]:
    """Each file's path -> its text."""
    return {
        GENERATED / "prometheus-rule.yaml": prometheus_rule(),
        GENERATED / "kafka-topics.yaml": kafka_topics(),
        GENERATED / "kafka-users.yaml": kafka_users(),
        GENERATED / "fraud-factory.json": DASHBOARD.read_text(),
        GENERATED / "feature_store.yaml": FEATURE_STORE.read_text(),
        REDIS_CLUSTER / "feature_store.yaml": cluster_feature_store(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.jobs.deploy_assets",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a committed file differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in assets().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(REPO_ROOT)))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    if stale:
        print(f"out of date with their sources: {', '.join(stale)}; "
              "run python -m streams.jobs.deploy_assets")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
