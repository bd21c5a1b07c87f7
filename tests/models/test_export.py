"""ONNX export follows config.pbtxt and reproduces the torch model; publishing never overwrites."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.export import BACKEND_SOURCE, export_onnx, publish_version
from models.mlp import FraudMLP
from models.train import synthetic_dataset, train_mlp
from models.triton_config import (
    DEFAULT_CONFIG_PATH,
    load_request_config,
    parse_pbtxt,
    read_model_config,
)


@pytest.fixture(scope="module")
def trained() -> FraudMLP:
    X, y = synthetic_dataset(6000, seed=0)
    X_val, y_val = synthetic_dataset(2000, seed=1)
    return train_mlp(X, y, epochs=8, seed=0, X_val=X_val, y_val=y_val, device="cpu").model


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    """A model repository holding only the real config.pbtxt."""
    model_dir = tmp_path / "triton_repo" / "fraud_detector"
    model_dir.mkdir(parents=True)
    shutil.copy(DEFAULT_CONFIG_PATH, model_dir / "config.pbtxt")
    return tmp_path / "triton_repo"


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_config_parser_reads_the_contract() -> None:
    config = read_model_config()
    assert (config.name, config.backend) == ("fraud_detector", "python")
    assert config.max_batch_size == 4096
    features, score = config.input, config.output
    assert (features.name, features.triton_dtype, features.dims) == ("features", "FP32", (20,))
    assert (score.name, score.numpy_dtype, score.dims) == ("score", np.float32, (1,))
    assert config.n_features == 20


def test_parser_handles_comments_nesting_and_lists() -> None:
    fields = parse_pbtxt(
        """
        # comment
        name: "m"  max_batch_size: 8
        input [ { name: "a" dims: [ 2, 3 ] }, { name: 'b' dims: 4 } ]
        version_policy: { specific { versions: [1, 2] } }
        dynamic_batching { }
        """
    )
    assert fields["name"] == ["m"] and fields["max_batch_size"] == [8]
    assert [i["name"] for i in fields["input"]] == [["a"], ["b"]]
    assert fields["input"][0]["dims"] == [2, 3]
    assert fields["version_policy"][0]["specific"][0]["versions"] == [1, 2]
    assert fields["dynamic_batching"] == [{}]


@pytest.mark.parametrize("batch", [1, 7, 1024])
def test_onnx_matches_torch(trained: FraudMLP, tmp_path: Path, batch: int) -> None:
    path = export_onnx(trained, tmp_path / "model.onnx")
    X, _ = synthetic_dataset(batch, seed=100 + batch)
    with torch.no_grad():
        expected = trained(torch.from_numpy(X)).numpy()
    (got,) = _session(path).run(["score"], {"features": X})
    assert got.shape == (batch, 1) and got.dtype == np.float32
    assert np.max(np.abs(got - expected)) <= 1e-5


def test_export_has_dynamic_batch_and_normalisation(trained: FraudMLP, tmp_path: Path) -> None:
    graph = onnx.load(str(export_onnx(trained, tmp_path / "model.onnx"))).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[0].dim_value == 0
    assert [d.dim_value for d in dims[1:]] == [20]
    initialisers = {i.name for i in graph.initializer}
    assert {"mean", "std"} <= initialisers


def test_export_takes_tensor_names_from_the_config(trained: FraudMLP, tmp_path: Path) -> None:
    config = tmp_path / "config.pbtxt"
    config.write_text(
        DEFAULT_CONFIG_PATH.read_text()
        .replace('name: "features"', 'name: "rows"')
        .replace('name: "score"', 'name: "fraud_probability"')
    )
    session = _session(export_onnx(trained, tmp_path / "model.onnx", config_path=config))
    assert [i.name for i in session.get_inputs()] == ["rows"]
    assert [o.name for o in session.get_outputs()] == ["fraud_probability"]


def test_exported_model_ranks_fraud_first(trained: FraudMLP, tmp_path: Path) -> None:
    X, y = synthetic_dataset(5000, seed=7)
    (scores,) = _session(export_onnx(trained, tmp_path / "model.onnx")).run(None, {"features": X})
    top = np.argsort(-scores.ravel())[:100]
    assert y[top].mean() > 5 * y.mean()


def test_publish_writes_a_version_and_refuses_to_overwrite(trained: FraudMLP, repo: Path) -> None:
    version_dir = publish_version(trained, repo, 1)
    assert version_dir == repo / "fraud_detector" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.onnx", "model.py"]
    assert (version_dir / "model.py").read_bytes() == BACKEND_SOURCE.read_bytes()
    before = (version_dir / "model.onnx").read_bytes()

    with pytest.raises(FileExistsError):
        publish_version(FraudMLP(20, seed=3), repo, 1)
    assert (version_dir / "model.onnx").read_bytes() == before
    assert sorted(p.name for p in (repo / "fraud_detector").iterdir()) == ["1", "config.pbtxt"]


def test_publish_rejects_non_positive_versions(trained: FraudMLP, repo: Path) -> None:
    with pytest.raises(ValueError):
        publish_version(trained, repo, 0)


def test_load_request_config_selects_versions() -> None:
    config = json.loads(load_request_config(DEFAULT_CONFIG_PATH, [2, 1, 2]))
    assert config["version_policy"] == {"specific": {"versions": ["1", "2"]}}
    assert config["input"][0]["name"] == "features" and config["backend"] == "python"
