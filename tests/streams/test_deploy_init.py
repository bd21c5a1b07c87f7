"""``factory init``: a deployment's preparation on services that run already."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.serving_configs import variant_path
from models.triton_config import DEFAULT_CONFIG_PATH
from streams.jobs.deploy_init import CONFIGS, write_model_config
from streams.settings import REPO_ROOT


@pytest.mark.parametrize("backend", CONFIGS)
def test_the_model_repository_gets_the_backends_configuration_once(backend: str,
                                                                    tmp_path: Path) -> None:
    target = tmp_path / "fraud_detector" / "config.pbtxt"
    assert write_model_config(tmp_path, backend) is True
    source = DEFAULT_CONFIG_PATH if backend == "python" else variant_path(backend)
    assert target.read_text() == source.read_text()
    assert write_model_config(tmp_path, backend) is False
    other = next(b for b in CONFIGS if b != backend)
    assert write_model_config(tmp_path, other) is True
    assert target.read_text() != source.read_text()


def test_the_models_source_configuration_is_never_overwritten() -> None:
    before = DEFAULT_CONFIG_PATH.read_text()
    with pytest.raises(ValueError, match="source configuration"):
        write_model_config(DEFAULT_CONFIG_PATH.parents[1], "onnxruntime-gpu")
    assert DEFAULT_CONFIG_PATH.read_text() == before


@pytest.mark.integration
def test_init_prepares_a_deployment_and_a_second_run_changes_nothing(live_stack,
                                                                     tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient

    from models.registry import Registry
    from streams.topics import topic_partitions

    endpoints = live_stack.endpoints
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka,
           "REDIS_URL": endpoints.redis, "TRITON_URL": endpoints.triton,
           "FACTORY_STATE_DIR": str(tmp_path / "state"),
           "FACTORY_REGISTRY_DIR": str(tmp_path / "registry"),
           "FACTORY_PARTITIONS": str(live_stack.settings.partitions)}
    repo = tmp_path / "models"
    argv = [sys.executable, "-m", "streams.jobs.cli", "init", "--triton-config", "onnxruntime-cpu",
            "--repo", str(repo), "--customers", "100", "--terminals", "200", "--days", "30"]

    first = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "(trained now)" in first.stdout
    registry = Registry(tmp_path / "registry", repo_dir=repo)
    champion = registry.champion()
    assert champion is not None
    assert (repo / "fraud_detector" / str(champion) / "model.onnx").exists()
    assert (repo / "fraud_detector" / "config.pbtxt").read_text() == \
        variant_path("onnxruntime-cpu").read_text()
    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    topics = admin.list_topics(timeout=10).topics
    for name, count in topic_partitions(live_stack.settings.partitions).items():
        assert len(topics[name].partitions) == count, name

    second = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "trained now" not in second.stdout and "configuration already" in second.stdout
    assert registry.champion() == champion
    assert [v.version for v in registry.list()] == [champion]
