"""infra/k8s/ checked without a cluster: every overlay builds with ``kubectl kustomize``,
every core object validates against the Kubernetes schema (``kubernetes-validate``,
strict: an unknown field is an error), every custom resource against its own fields
(Strimzi's generated CRDs, KEDA's and the Prometheus operator's models), and the objects
agree with each other and with the factory: KEDA watches the worker's own group and
topic and never scales past the partitions, Triton's probes hit its health endpoints, every
Triton pod is in TRITON_URL, the PrometheusRule is the file promtool tests, no credential is
written anywhere."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streams.dataplane.worker import role_defaults
from streams.jobs import deploy_assets
from streams.jobs.deploy_init import CONFIGS
from streams.jobs.deploy_init import parser as init_parser
from streams.settings import REPO_ROOT, Settings
from streams.topics import LABELS, TRANSACTIONS
from tests.infra.strimzi_schemas import validate_strimzi

K8S = REPO_ROOT / "infra" / "k8s"
OVERLAYS = ("base", "overlays/cpu", "overlays/gpu", "overlays/gpu-redis-cluster")
KUBERNETES_VERSION = "1.31"
CORE_GROUPS = ("v1", "apps/v1", "batch/v1")
FACTORY_IMAGE = "fraud-factory"
PUBLIC_IMAGES = {"redis", "nvcr.io/nvidia/tritonserver"}
"""Images the manifests pull besides the factory's own (infra/image/Dockerfile); Kafka
runs in the Strimzi operator's images."""
STRIMZI_MADE_SECRETS = {deploy_assets.FACTORY_USER, deploy_assets.KEDA_USER,
                        f"{deploy_assets.KAFKA_CLUSTER}-cluster-ca-cert"}
USER_SECRETS = {"factory-redis"}
"""Secrets the user creates before applying (infra/k8s/README.md)."""


@functools.cache
def build(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: the deployment checks build the overlays with "
                    "`kubectl kustomize` (install kubectl)")
    out = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {overlay} failed: {out.stderr}"
    return tuple(o for o in yaml.safe_load_all(out.stdout) if o)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in build(overlay) if o["kind"] == kind}


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def workloads(overlay: str) -> list[dict[str, Any]]:
    return [o for o in build(overlay) if o["kind"] in ("StatefulSet", "Deployment", "Job")]


def factory_containers(overlay: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, c) for w in workloads(overlay) for c in containers(w)
            if c["image"].split(":")[0] == FACTORY_IMAGE]


def settings_data(overlay: str) -> dict[str, str]:
    return objects(overlay, "ConfigMap")["factory-settings"]["data"]


def test_the_generated_objects_are_made_from_their_sources() -> None:
    assert deploy_assets.main(["--check"]) == 0, "run python -m streams.jobs.deploy_assets"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_builds_into_the_factory_namespace(overlay: str) -> None:
    built = build(overlay)
    kinds = {o["kind"] for o in built}
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "StatefulSet", "Deployment",
            "Job", "ScaledObject", "PrometheusRule", "ServiceMonitor"} <= kinds
    for obj in built:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "fraud-factory", obj["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_against_the_kubernetes_schema(overlay: str) -> None:
    core = [o for o in build(overlay) if o["apiVersion"] in CORE_GROUPS]
    assert len(core) >= 15
    for obj in core:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_a_misspelled_core_field_is_caught() -> None:
    """The schema check is strict: a field Kubernetes would drop fails it."""
    sts = dict(objects("base", "StatefulSet")["score-worker"])
    sts["spec"] = {**sts["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBERNETES_VERSION, strict=True)


def dropped_fields(given: Any, kept: Any, path: str = "") -> list[str]:  # noqa: ANN401
    """Keys of ``given`` that a model's dump ``kept`` does not have: fields the model does
    not know (pydantic ignores them)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        return [p for key, value in given.items()
                for p in ([f"{path}.{key}"] if key not in kept
                          else dropped_fields(value, kept[key], f"{path}.{key}"))]
    if isinstance(given, list) and isinstance(kept, list):
        return [p for i, (a, b) in enumerate(zip(given, kept, strict=False))
                for p in dropped_fields(a, b, f"{path}[{i}]")]
    return []


def validate_model(obj: dict[str, Any]) -> None:
    """KEDA and Prometheus-operator objects through their published models (cloudcoil's,
    generated from the projects' CRDs): wrong types fail, unknown fields too."""
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as monitoring

    models = {("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
              ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
              ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
              ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring.PrometheusRule}
    model = models[(obj["apiVersion"], obj["kind"])]
    kept = model.model_validate(obj).model_dump(by_alias=True, exclude_unset=True, mode="json")
    unknown = [p for p in dropped_fields(obj, kept) if not p.startswith(".metadata")]
    assert not unknown, f"{obj['kind']} {obj['metadata']['name']}: unknown fields {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_their_fields(overlay: str) -> None:
    custom = [o for o in build(overlay) if o["apiVersion"] not in CORE_GROUPS]
    strimzi = [o for o in custom if o["apiVersion"].startswith("kafka.strimzi.io/")]
    others = [o for o in custom if o not in strimzi]
    assert len(strimzi) == 10 and len(others) == 7
    for obj in strimzi:
        validate_strimzi(obj)
    for obj in others:
        validate_model(obj)


def test_a_custom_resource_with_a_wrong_field_is_caught() -> None:
    scaled = objects("base", "ScaledObject")["score-worker"]
    with pytest.raises(AssertionError, match="maxReplicas"):
        validate_model({**scaled, "spec": {**scaled["spec"], "maxReplicas": 8}})
    with pytest.raises(Exception, match="validation error"):
        validate_model({**scaled, "spec": {**scaled["spec"], "maxReplicaCount": "eight"}})


def worker_role(sts: dict[str, Any]) -> str:
    args = containers(sts)[0]["args"]
    return args[args.index("--role") + 1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_each_worker_on_its_own_group_up_to_its_partitions(overlay: str) -> None:
    settings = settings_data(overlay)
    topics = objects(overlay, "KafkaTopic")
    scaled = objects(overlay, "ScaledObject")
    workers = objects(overlay, "StatefulSet")
    assert set(scaled) == {"score-worker", "labels-worker"}
    for name, obj in scaled.items():
        target = obj["spec"]["scaleTargetRef"]
        assert target["kind"] == "StatefulSet" and target["name"] in workers
        role = worker_role(workers[target["name"]])
        group, _ = role_defaults(role, Settings())
        topic = {"score": TRANSACTIONS, "labels": LABELS}[role]
        (trigger,) = obj["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata are strings"
        assert meta["consumerGroup"] == group, name
        assert meta["topic"] == topic, name
        assert meta["bootstrapServers"] == settings["KAFKA_BOOTSTRAP_SERVERS"]
        partitions = topics[topic]["spec"]["partitions"]
        assert obj["spec"]["maxReplicaCount"] == partitions == int(settings["FACTORY_PARTITIONS"])
        assert obj["spec"]["minReplicaCount"] >= 1
        auth = objects(overlay, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
        refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
        assert refs["password"]["name"] == deploy_assets.KEDA_USER
        keda_config = objects(overlay, "ConfigMap")["factory-keda-kafka"]["data"]
        assert keda_config["username"] == deploy_assets.KEDA_USER
        assert keda_config["sasl"] == "scram_sha512" and keda_config["tls"] == "enable"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_are_static_members_named_by_their_pod(overlay: str) -> None:
    for sts in objects(overlay, "StatefulSet").values():
        if sts["metadata"]["name"] not in ("score-worker", "labels-worker"):
            continue
        env = {e["name"]: e for e in containers(sts)[0]["env"]}
        ref = env["FACTORY_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert ref == "metadata.name"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_probes_hit_its_health_endpoints(overlay: str) -> None:
    triton = objects(overlay, "StatefulSet")["triton"]
    (container,) = containers(triton)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe, path in (("livenessProbe", "/v2/health/live"),
                        ("readinessProbe", "/v2/health/ready"),
                        ("startupProbe", "/v2/health/live")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports[get["port"]] == 8000, probe
    assert "--model-control-mode=explicit" in container["args"]


def mounted_subpath(container: dict[str, Any], path: str) -> str:
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == path]
    return f"{mount['name']}/{mount.get('subPath', '')}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_serves_the_model_repository_the_factory_writes(overlay: str) -> None:
    settings = settings_data(overlay)
    triton = containers(objects(overlay, "StatefulSet")["triton"])[0]
    repo_arg = next(a for a in triton["args"] if a.startswith("--model-repository="))
    served = mounted_subpath(triton, repo_arg.split("=", 1)[1])
    writers = [c for w, c in factory_containers(overlay)
               if w["metadata"]["name"] in ("retrainer", "factory-init")]
    assert len(writers) == 2
    for container in writers:
        assert mounted_subpath(container, settings["FACTORY_TRITON_REPO"]) == served
        assert mounted_subpath(container, settings["FACTORY_REGISTRY_DIR"]) != served
    # The feature log the scoring workers write is the one the retrainer reads.
    score = containers(objects(overlay, "StatefulSet")["score-worker"])[0]
    retrainer = containers(objects(overlay, "Deployment")["retrainer"])[0]
    log = score["args"][score["args"].index("--feature-log") + 1]
    assert retrainer["args"][retrainer["args"].index("--feature-log") + 1] == log
    assert mounted_subpath(score, log) == mounted_subpath(retrainer, log)


@pytest.mark.parametrize(("overlay", "gpus", "config", "tritons"),
                         [("overlays/cpu", 0, "onnxruntime-cpu", 1),
                          ("overlays/gpu", 1, "onnxruntime-gpu", 2),
                          ("overlays/gpu-redis-cluster", 1, "onnxruntime-gpu", 2)])
def test_each_overlay_matches_its_accelerator(overlay: str, gpus: int, config: str,
                                              tritons: int) -> None:
    triton = objects(overlay, "StatefulSet")["triton"]
    limits = containers(triton)[0]["resources"].get("limits", {})
    assert int(limits.get("nvidia.com/gpu", 0)) == gpus
    assert triton["spec"]["replicas"] == tritons
    init = containers(objects(overlay, "Job")["factory-init"])[0]
    args = init_parser().parse_args(init["args"][1:])
    assert args.triton_config == config and config in CONFIGS
    assert args.no_topics, "the topics are Strimzi's KafkaTopics"
    # Every Triton pod by name: a load request has to reach each of them.
    urls = settings_data(overlay)["TRITON_URL"].split(",")
    assert urls == [f"triton-{i}.triton:8001" for i in range(tritons)]
    service = objects(overlay, "Service")["triton"]
    assert service["spec"]["clusterIP"] == "None"
    assert triton["spec"]["serviceName"] == "triton"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_prometheus_rule_is_the_file_promtool_tests(overlay: str, tmp_path: Path) -> None:
    (rule,) = objects(overlay, "PrometheusRule").values()
    rules_file = REPO_ROOT / "infra" / "prometheus" / "factory-rules.yml"
    assert rule["spec"]["groups"] == yaml.safe_load(rules_file.read_text())["groups"]
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (Debian: prometheus)"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_scrape_every_metrics_port(overlay: str) -> None:
    services = objects(overlay, "Service")
    scraped = set()
    for monitor in objects(overlay, "ServiceMonitor").values():
        wanted = monitor["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services.values()
                  if wanted.items() <= s["metadata"].get("labels", {}).items()]
        assert chosen, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        ports = {e["port"] for e in monitor["spec"]["endpoints"]}
        for service in chosen:
            assert ports <= {p["name"] for p in service["spec"]["ports"]}
            scraped.add(service["metadata"]["name"])
    assert scraped == {"score-worker", "labels-worker", "retrainer", "triton"}
    # And each Service's metrics port is the port the process serves on.
    for name, port in (("score-worker", role_defaults("score", Settings())[1]),
                       ("labels-worker", role_defaults("labels", Settings())[1]),
                       ("retrainer", Settings().retrainer_metrics_port)):
        (metrics,) = [p for p in services[name]["spec"]["ports"] if p["name"] == "metrics"]
        assert metrics["port"] == port, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_only_come_from_secrets(overlay: str) -> None:
    built = build(overlay)
    assert not [o for o in built if o["kind"] == "Secret"], "a Secret in the manifests"
    referenced = set()
    for workload in workloads(overlay):
        for container in containers(workload):
            for env in container.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$", env["name"]):
                    assert "value" not in env, f"{env['name']} written in {workload['kind']}"
                    referenced.add(env["valueFrom"]["secretKeyRef"]["name"])
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
    for auth in objects(overlay, "TriggerAuthentication").values():
        referenced |= {r["name"] for r in auth["spec"]["secretTargetRef"]}
    assert referenced == STRIMZI_MADE_SECRETS | USER_SECRETS
    users = set(objects(overlay, "KafkaUser"))
    assert {deploy_assets.FACTORY_USER, deploy_assets.KEDA_USER} == users
    for _, container in factory_containers(overlay):
        env = {e["name"]: e for e in container["env"]}
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == \
            settings_data(overlay)["KAFKA_SASL_USERNAME"] == deploy_assets.FACTORY_USER


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_factory_pods_are_given_only_settings_the_factory_reads(overlay: str) -> None:
    """A misspelled setting would be ignored silently: every name is one
    streams/settings.py, infra/settings.py or Feast's configuration reads."""
    read = "".join((REPO_ROOT / top / "settings.py").read_text() for top in ("streams", "infra"))
    names = set(settings_data(overlay))
    for _, container in factory_containers(overlay):
        names |= {e["name"] for e in container["env"]}
    unread = sorted(n for n in names if f'"{n}"' not in read)
    assert not unread, f"settings the factory never reads: {unread}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_public_or_the_factorys_own(overlay: str) -> None:
    for workload in workloads(overlay):
        for container in containers(workload):
            name, _, tag = container["image"].rpartition(":")
            assert tag and tag != "latest", container["image"]
            assert name == FACTORY_IMAGE or name in PUBLIC_IMAGES, container["image"]
    dockerfile = (REPO_ROOT / "infra" / "image" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_factory_pod_and_feast_name_the_same_redis(overlay: str) -> None:
    """One Redis server, or with components/redis-cluster a Redis Cluster: then no single
    Redis is left, every factory pod's REDIS_URL is redis+cluster:// to the cluster's
    Service, Feast's configuration says redis_cluster, and the Job that forms the cluster
    joins every pod of it."""
    from streams.clients.redis_conn import is_cluster

    sets, services = objects(overlay, "StatefulSet"), objects(overlay, "Service")
    cluster = "redis-cluster" in sets
    (feast,) = [c for n, c in objects(overlay, "ConfigMap").items()
                if n.startswith("feast-feature-store")]
    online = yaml.safe_load(feast["data"]["feature_store.yaml"])["online_store"]
    assert online.get("redis_type", "redis") == ("redis_cluster" if cluster else "redis")
    urls = set()
    for workload, container in factory_containers(overlay):
        env = {e["name"]: e for e in container["env"]}
        urls.add(env["REDIS_URL"]["value"])
        mounts = [m for m in container["volumeMounts"] if m["name"] == "feast"]
        assert mounts, f"{workload['metadata']['name']} has not Feast's configuration"
    (url,) = urls
    host = url.split("@", 1)[1].split(":")[0]
    assert is_cluster(url) == cluster and host in services
    assert url.startswith(("redis://:$(REDIS_PASSWORD)@", "redis+cluster://:$(REDIS_PASSWORD)@"))
    if cluster:
        assert "redis" not in sets and "redis" not in services
        create = containers(objects(overlay, "Job")["redis-cluster-create"])[0]
        nodes = {e["name"]: e for e in create["env"]}["NODES"]["value"].split()
        replicas = sets["redis-cluster"]["spec"]["replicas"]
        assert nodes == [f"redis-cluster-{i}.redis-cluster:6379" for i in range(replicas)]
        assert services["redis-cluster"]["spec"]["clusterIP"] == "None"
