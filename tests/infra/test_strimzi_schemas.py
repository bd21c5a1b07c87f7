"""Strimzi custom resources against Strimzi's real CRD schemas (kafka.strimzi.io/v1beta2).

Unit tests, no services: the schemas come from ``infra/k8s/schemas/pom.xml`` (Strimzi's CRD
generator over the ``io.strimzi:api`` model, from Maven Central), built once when missing. A
machine where Maven cannot build them fails here, with Maven's output, rather than skipping.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from tests.infra import strimzi_schemas
from tests.infra.strimzi_schemas import served_versions, strimzi_schema, validate_strimzi

CLUSTER = "fraud"


def kafka() -> dict[str, Any]:
    """A minimal KRaft cluster whose nodes come from node pools."""
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "Kafka",
        "metadata": {
            "name": CLUSTER,
            "annotations": {"strimzi.io/node-pools": "enabled", "strimzi.io/kraft": "enabled"},
        },
        "spec": {
            "kafka": {
                "version": "3.9.0",
                "metadataVersion": "3.9-IV0",
                "listeners": [
                    {"name": "plain", "port": 9092, "type": "internal", "tls": False},
                    {
                        "name": "tls",
                        "port": 9093,
                        "type": "internal",
                        "tls": True,
                        "authentication": {"type": "scram-sha-512"},
                    },
                ],
                "authorization": {"type": "simple"},
                "config": {
                    "offsets.topic.replication.factor": 3,
                    "transaction.state.log.replication.factor": 3,
                    "transaction.state.log.min.isr": 2,
                    "default.replication.factor": 3,
                    "min.insync.replicas": 2,
                },
                "resources": {"requests": {"cpu": 1, "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
            },
            "entityOperator": {"topicOperator": {}, "userOperator": {}},
        },
    }


def node_pool() -> dict[str, Any]:
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaNodePool",
        "metadata": {"name": "dual-role", "labels": {"strimzi.io/cluster": CLUSTER}},
        "spec": {
            "replicas": 3,
            "roles": ["controller", "broker"],
            "storage": {
                "type": "jbod",
                "volumes": [
                    {
                        "id": 0,
                        "type": "persistent-claim",
                        "size": "100Gi",
                        "deleteClaim": False,
                        "kraftMetadata": "shared",
                    }
                ],
            },
        },
    }


def topic() -> dict[str, Any]:
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {"name": "transactions", "labels": {"strimzi.io/cluster": CLUSTER}},
        "spec": {
            "partitions": 8,
            "replicas": 3,
            "config": {"retention.ms": 604800000, "cleanup.policy": "delete"},
        },
    }


def user() -> dict[str, Any]:
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaUser",
        "metadata": {"name": "scorer", "labels": {"strimzi.io/cluster": CLUSTER}},
        "spec": {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {
                "type": "simple",
                "acls": [
                    {
                        "resource": {"type": "topic", "name": "transactions"},
                        "operations": ["Describe", "Read"],
                        "host": "*",
                    },
                    {
                        "resource": {"type": "group", "name": "scorer-", "patternType": "prefix"},
                        "operations": ["Read"],
                    },
                    {
                        "resource": {"type": "topic", "name": "scores"},
                        "operations": ["Describe", "Write"],
                    },
                ],
            },
        },
    }


VALID = {"Kafka": kafka, "KafkaNodePool": node_pool, "KafkaTopic": topic, "KafkaUser": user}


def invalid(obj: dict[str, Any], *, strict: bool = True) -> jsonschema.ValidationError:
    with pytest.raises(jsonschema.ValidationError) as caught:
        validate_strimzi(obj, strict=strict)
    return caught.value


def test_schemas_are_strimzis_generated_v1beta2_schemas() -> None:
    kafka_spec = strimzi_schema("Kafka")["properties"]["spec"]
    assert "listeners" in kafka_spec["properties"]["kafka"]["properties"]
    assert kafka_spec["required"] == ["kafka"]
    pool_spec = strimzi_schema("KafkaNodePool")["properties"]["spec"]
    assert pool_spec["properties"]["roles"]["items"]["enum"] == ["controller", "broker"]
    partitions = strimzi_schema("KafkaTopic")["properties"]["spec"]["properties"]["partitions"]
    assert (partitions["type"], partitions["minimum"]) == ("integer", 1)
    user_auth = strimzi_schema("KafkaUser")["properties"]["spec"]["properties"]["authentication"]
    assert "scram-sha-512" in user_auth["properties"]["type"]["enum"]
    # As Strimzi ships them: Kafka and KafkaNodePool serve v1beta2 only; KafkaTopic and KafkaUser
    # keep their older versions too.
    assert served_versions("Kafka") == ["v1beta2"]
    assert "v1beta2" in served_versions("KafkaTopic")


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_resources_pass(kind: str) -> None:
    validate_strimzi(VALID[kind]())
    validate_strimzi(VALID[kind](), strict=False)


def test_misspelled_field_fails_in_strict_mode() -> None:
    obj = kafka()
    obj["spec"]["kafka"]["listenrs"] = obj["spec"]["kafka"].pop("listeners")
    error = invalid(obj)
    assert "'listenrs' was unexpected" in str(error)
    assert "$.spec.kafka" in str(error)


def test_misspelled_optional_field_is_caught_only_by_strict_mode() -> None:
    # The API server would prune ``replica`` and Strimzi would only log a warning: strict mode
    # is what catches the typo.
    obj = topic()
    obj["spec"]["replica"] = obj["spec"].pop("replicas")
    validate_strimzi(obj, strict=False)
    assert "'replica' was unexpected" in str(invalid(obj))


def test_misspelled_nested_field_fails() -> None:
    obj = node_pool()
    obj["spec"]["storage"]["volumes"][0]["deleteClaims"] = True
    error = invalid(obj)
    assert "$.spec.storage.volumes[0]" in str(error)
    assert "'deleteClaims' was unexpected" in str(error)


def test_wrong_type_fails() -> None:
    obj = topic()
    obj["spec"]["partitions"] = "eight"
    error = invalid(obj, strict=False)
    assert list(error.path) == ["spec", "partitions"]
    assert "'eight' is not of type 'integer'" in str(error)


@pytest.mark.parametrize(
    ("kind", "path", "value", "message"),
    [
        ("KafkaNodePool", ("spec", "roles"), ["controller", "brokers"], "is not one of"),
        ("KafkaTopic", ("spec", "partitions"), 0, "less than the minimum"),
        ("KafkaUser", ("spec", "authentication", "type"), "scram-sha-256", "is not one of"),
        ("Kafka", ("spec", "kafka", "listeners", 0, "name"), "Plain-Text", "does not match"),
    ],
)
def test_values_outside_the_schema_fail(
    kind: str, path: tuple[str | int, ...], value: Any, message: str
) -> None:
    obj = VALID[kind]()
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert message in str(invalid(obj))


def test_required_fields_are_required() -> None:
    obj = node_pool()
    del obj["spec"]["roles"]
    assert "'roles' is a required property" in str(invalid(obj))
    obj = user()
    del obj["spec"]["authorization"]["acls"][0]["resource"]
    assert "'resource' is a required property" in str(invalid(obj))


def test_free_form_fields_stay_free_form_in_strict_mode() -> None:
    obj = kafka()
    # ``config`` is x-kubernetes-preserve-unknown-fields; metadata is any ObjectMeta.
    obj["spec"]["kafka"]["config"]["any.broker.setting"] = "x"
    obj["metadata"]["finalizers"] = ["example.com/keep"]
    validate_strimzi(obj)


def test_envelope_is_checked() -> None:
    obj = topic()
    obj["apiVersion"] = "kafka.strimzi.io/v1"
    assert "is not served" in str(invalid(obj))
    obj = topic()
    obj["kind"] = "KafkaTopics"
    assert "not one of the Strimzi kinds" in str(invalid(obj))
    obj = topic()
    del obj["metadata"]["name"]
    invalid(obj)
    obj = topic()
    obj["metadata"]["labels"]["strimzi.io/cluster"] = 1
    assert "$.metadata.labels" in str(invalid(obj))


def test_all_errors_are_reported() -> None:
    obj = topic()
    obj["spec"]["partitions"] = "eight"
    obj["spec"]["replicas"] = "three"
    error = invalid(obj)
    assert len(error.context) == 2
    assert "$.spec.partitions" in str(error) and "$.spec.replicas" in str(error)


def test_unknown_kind_or_version_for_schema() -> None:
    with pytest.raises(ValueError, match="known kinds"):
        strimzi_schema("KafkaConnectors")
    with pytest.raises(ValueError, match="serves no version"):
        strimzi_schema("Kafka", "v1alpha1")


def test_strict_mode_keeps_oneof_constraints_open() -> None:
    # Strimzi's oneOf branches list one property each (certificate or pattern): strict mode must
    # close the object itself, not the branches.
    obj = kafka()
    listener = obj["spec"]["kafka"]["listeners"][1]
    listener["authentication"] = {
        "type": "oauth",
        "validIssuerUri": "https://sso.example.com/realms/factory",
        "jwksEndpointUri": "https://sso.example.com/realms/factory/certs",
        "tlsTrustedCertificates": [{"secretName": "sso-ca", "certificate": "ca.crt"}],
    }
    validate_strimzi(obj)
    listener["authentication"]["tlsTrustedCertificates"][0]["pattern"] = "*.crt"
    assert "is valid under each of" in str(invalid(obj))


def test_no_maven_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(strimzi_schemas, "_schemas_current", lambda: False)
    monkeypatch.setattr(strimzi_schemas.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"Maven \(mvn\) is not on PATH"):
        strimzi_schemas.ensure_schemas()
