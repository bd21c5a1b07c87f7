"""Triton from the nvidia-pytriton wheel serves fraud_detector versions side by side.

Starts a real tritonserver on free ports over a temporary copy of the model repository,
loads and swaps versions through the gRPC model repository API, compares every score
with in-process ONNX Runtime, and checks that stopping leaves nothing behind.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from infra.local.base import PrerequisiteError, free_port, pid_alive, port_is_open
from infra.local.triton import TritonService
from models.export import publish_version
from models.mlp import FraudMLP
from models.train import synthetic_dataset
from models.triton_config import DEFAULT_CONFIG_PATH, MODEL_NAME, load_request_config

pytestmark = pytest.mark.integration


def _model(seed: int) -> FraudMLP:
    X, _ = synthetic_dataset(2000, seed=seed)
    return FraudMLP(X.shape[1], seed=seed).fit_scaler(X).eval()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton") / "triton_repo"
    (root / MODEL_NAME).mkdir(parents=True)
    shutil.copy(DEFAULT_CONFIG_PATH, root / MODEL_NAME / "config.pbtxt")
    publish_version(_model(seed=1), root, 1)
    return root


@pytest.fixture(scope="module")
def triton(repo: Path) -> Iterator[TritonService]:
    service = TritonService(
        state_dir=repo.parent / "state",
        ports={"http": free_port(), "grpc": free_port(), "metrics": free_port()},
        model_repository=repo,
    )
    try:
        service.start()
    except PrerequisiteError as exc:
        pytest.skip(str(exc))
    yield service
    service.stop()


@pytest.fixture(scope="module")
def client(triton: TritonService) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(triton.url()) as connection:
        yield connection


def _load(client: grpcclient.InferenceServerClient, repo: Path, versions: list[int]) -> None:
    config = load_request_config(repo / MODEL_NAME / "config.pbtxt", versions)
    client.load_model(MODEL_NAME, config=config)


def _score(client: grpcclient.InferenceServerClient, rows: np.ndarray, version: int) -> np.ndarray:
    features = grpcclient.InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows)
    result = client.infer(MODEL_NAME, [features], model_version=str(version))
    return result.as_numpy("score")


def _reference(repo: Path, version: int, rows: np.ndarray) -> np.ndarray:
    path = repo / MODEL_NAME / str(version) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["score"], {"features": rows})[0]


def test_scores_match_onnxruntime(
    triton: TritonService, client: grpcclient.InferenceServerClient, repo: Path
) -> None:
    assert client.is_server_ready()
    assert not client.is_model_ready(MODEL_NAME), "explicit control loads nothing at start"
    _load(client, repo, [1])
    assert client.is_model_ready(MODEL_NAME, "1")
    for batch in (1, 7, 1024, 4096):
        rows, _ = synthetic_dataset(batch, seed=batch)
        scores = _score(client, rows, version=1)
        assert scores.shape == (batch, 1)
        np.testing.assert_allclose(scores, _reference(repo, 1, rows), rtol=0, atol=1e-5)


def test_second_version_loads_beside_the_first(
    triton: TritonService, client: grpcclient.InferenceServerClient, repo: Path
) -> None:
    if not client.is_model_ready(MODEL_NAME, "1"):
        _load(client, repo, [1])
    publish_version(_model(seed=2), repo, 2)
    rows, _ = synthetic_dataset(256, seed=5)

    failures: list[BaseException] = []
    done = threading.Event()

    def keep_scoring_version_1() -> None:
        with grpcclient.InferenceServerClient(triton.url()) as own:
            while not done.is_set():
                try:
                    _score(own, rows, version=1)
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    failures.append(exc)

    scorer = threading.Thread(target=keep_scoring_version_1)
    scorer.start()
    try:
        _load(client, repo, [1, 2])
    finally:
        done.set()
        scorer.join()
    assert not failures, f"requests to version 1 failed while version 2 loaded: {failures[:1]}"

    assert client.is_model_ready(MODEL_NAME, "1") and client.is_model_ready(MODEL_NAME, "2")
    v1, v2 = _score(client, rows, version=1), _score(client, rows, version=2)
    np.testing.assert_allclose(v1, _reference(repo, 1, rows), rtol=0, atol=1e-5)
    np.testing.assert_allclose(v2, _reference(repo, 2, rows), rtol=0, atol=1e-5)
    assert np.abs(v1 - v2).max() > 1e-3, "the two versions are different models"

    _load(client, repo, [2])
    assert client.is_model_ready(MODEL_NAME, "2") and not client.is_model_ready(MODEL_NAME, "1")
    client.unload_model(MODEL_NAME)
    assert not client.is_model_ready(MODEL_NAME, "2")


def test_stop_leaves_no_process_and_no_open_port(
    triton: TritonService, client: grpcclient.InferenceServerClient, repo: Path
) -> None:
    _load(client, repo, [1])  # a loaded model means a python stub process to clean up
    pid = triton.pid()
    assert pid is not None
    group = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _pgid(p) == pid]
    assert len(group) >= 2, "tritonserver and at least one python stub"

    triton.stop()

    assert triton.pid() is None
    assert not [p for p in group if pid_alive(int(p.name))]
    assert not [port for port in triton.ports.values() if port_is_open(port)]


def _pgid(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None
