"""Shared fixtures: one real local stack a test session, on free ports.

The stack (Kafka, Redis, Triton, Prometheus) keeps its state in a temporary folder and is
stopped at the end of the session. Services named by settings (``KAFKA_BOOTSTRAP_SERVERS``,
``REDIS_URL``, ``TRITON_URL``) are used as they are.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.local.base import free_port
from infra.local.manager import Endpoints, Stack
from streams.settings import REPO_ROOT, Settings
from streams.topics import kafka_layout


@dataclasses.dataclass
class LiveStack:
    settings: Settings
    endpoints: Endpoints
    stack: Stack
    triton_repo: Path


def _test_settings(state: Path) -> Settings:
    base = Settings.from_env()
    return dataclasses.replace(
        base,
        state_dir=state,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        redis_port=free_port(),
        triton_http_port=free_port(),
        triton_grpc_port=free_port(),
        triton_metrics_port=free_port(),
        prometheus_port=free_port(), alertmanager_port=free_port(),
        worker_metrics_port=free_port(),
        partitions=4,
    )


def publish_test_model(repo: Path, version: int, seed: int = 0) -> Path:
    """Train a small MLP on synthetic data and publish it as ``version`` in ``repo``."""
    from models.export import publish_version
    from models.train import synthetic_dataset, train_mlp

    X, y = synthetic_dataset(4000, seed=seed)
    result = train_mlp(X, y, epochs=3, seed=seed, device="cpu")
    return publish_version(result.model, repo, version)


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    from streams.clients.feast_client import apply_repo
    from streams.clients.triton_models import load_model

    state = tmp_path_factory.mktemp("factory-state")
    repo = tmp_path_factory.mktemp("triton-repo")
    (repo / "fraud_detector").mkdir()
    shutil.copyfile(REPO_ROOT / "triton_repo" / "fraud_detector" / "config.pbtxt",
                    repo / "fraud_detector" / "config.pbtxt")
    publish_test_model(repo, 1)
    settings = _test_settings(state)
    stack = Stack(settings, kafka_layout(settings.partitions), triton_repo=repo)
    try:
        endpoints = stack.up(echo=False)
        apply_repo(endpoints.redis)
        load_model(endpoints.triton, [1], repo=repo)
        yield LiveStack(settings, endpoints, stack, repo)
    finally:
        stack.down(echo=False)


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis Cluster of three primaries (``redis+cluster://``), one a session."""
    from tests.redis_cluster import redis_cluster

    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as url:
        yield url


@pytest.fixture
def worker_factory(live_stack: LiveStack, tmp_path: Path) -> Iterator[Callable[..., object]]:
    """Start workers with a fresh consumer group each; all are stopped after the test."""
    from streams.dataplane.worker import WorkerProcess

    started: list[WorkerProcess] = []

    def start(app_id: str | None = None, **kwargs: object) -> WorkerProcess:
        app_id = app_id or f"test-worker-{uuid.uuid4().hex[:8]}"
        kwargs.setdefault("metrics_port", free_port())
        worker = WorkerProcess(
            live_stack.settings, app_id, offset_reset="latest",
            log_path=str(tmp_path / f"{app_id}.log"),
            env={"FACTORY_STATE_DIR": str(live_stack.settings.state_dir)}, **kwargs,
        )
        started.append(worker)
        worker.start(live_stack.endpoints.kafka)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for the test (training's arithmetic the same on any machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
