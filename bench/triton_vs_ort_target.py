"""The Triton and model version the Triton against ONNX Runtime benchmark times.

Either an untrained scorer (the factory's recipe shape or the small FraudMLP) published
as version 1 into a temporary copy of the model repository, with a Triton of the local
stack started over it on free ports, or an external Triton and a version it serves, with
the ``model.onnx`` onnxruntime runs beside it. Used by :mod:`bench.triton_vs_ort`.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, Literal

from bench.common import isolated_settings, model_repository
from infra.local.manager import Stack
from infra.settings import KafkaSettings
from models.triton_config import MODEL_NAME, ModelConfig, read_model_config
from streams.topics import kafka_layout

ModelKind = Literal["recipe", "mlp"]


@dataclasses.dataclass
class Target:
    """The Triton to time and the model version both paths run."""

    url: str
    version: int
    onnx: Path
    config: ModelConfig
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    server_pgid: int | None = None
    server_log: Path | None = None


def build_model(kind: ModelKind, n_features: int) -> tuple[Any, dict[str, Any]]:
    """An untrained scorer of ``kind`` and the contract's width, and its description.

    ``recipe`` has the shape of the model the factory serves (:mod:`models.recipe`: a bag
    of binned MLPs, encodings fitted on synthetic rows); ``mlp`` is the small
    :class:`models.mlp.FraudMLP`. Untrained weights cost the same to run as trained ones.
    """
    from models.train import synthetic_dataset

    X, _ = synthetic_dataset(4000, seed=0, n_features=n_features)
    if kind == "mlp":
        from models.mlp import FraudMLP

        model = FraudMLP(n_features, seed=0).fit_scaler(X)
        shape = model.architecture()
    else:
        from models.binned_mlp import BinnedMLP, FraudEnsemble
        from models.recipe import DEFAULT_RECIPE as R

        model = FraudEnsemble([BinnedMLP(n_features, R.hidden, R.dropout, R.n_bins, seed=i)
                               .fit_encoding(X) for i in range(R.n_members)])
        shape = {"n_features": n_features, "members": R.n_members, "n_bins": R.n_bins,
                 "hidden": list(R.hidden)}
    parameters = sum(p.numel() for p in model.parameters())
    return model.eval(), {"kind": kind, **shape, "parameters": parameters}


def publish_model(repo: Path, n_features: int, kind: ModelKind) -> tuple[Path, dict[str, Any]]:
    """An untrained scorer as version 1 of a repository copy; its directory and description."""
    from models.export import publish_version

    model_repository(repo)
    model, description = build_model(kind, n_features)
    return publish_version(model, repo, 1), description


def start_triton(work: Path, config: ModelConfig, kind: ModelKind,
                 queue_delay_us: int | None = None) -> tuple[Stack, Target]:
    """Publish a model into a repository copy and start a Triton over it on free ports;
    with ``queue_delay_us``, the copy's dynamic batcher waits that long for a fuller batch."""
    from streams.clients.triton_models import load_model

    repo = work / "triton_repo"
    version_dir, model = publish_model(repo, config.n_features, kind)
    if queue_delay_us is not None:
        path = repo / MODEL_NAME / "config.pbtxt"
        text, found = re.subn(r"max_queue_delay_microseconds:\s*\d+",
                              f"max_queue_delay_microseconds: {queue_delay_us}",
                              path.read_text())
        if not found:
            raise SystemExit(f"--queue-delay-us: no dynamic batcher delay in {path}")
        path.write_text(text)
    settings = isolated_settings(
        work / "state",
        ("triton_http_port", "triton_grpc_port", "triton_metrics_port", "prometheus_port"),
        kafka=KafkaSettings())
    stack = Stack(settings, kafka_layout(settings.partitions), triton_repo=repo)
    print("starting Triton ...", file=sys.stderr, flush=True)
    try:
        url = stack.up(["triton"], echo=False).triton
        load_model(url, [1], repo=repo)
    except BaseException:
        stack.down(["triton"], echo=False)
        raise
    service = stack.services["triton"]
    return stack, Target(url, 1, version_dir / "model.onnx", config, model,
                         server_pgid=service.pid(), server_log=service.log_file)


def external_target(url: str, version: int | None, repo: Path) -> Target:
    import tritonclient.grpc as grpc

    config = read_model_config(repo / MODEL_NAME / "config.pbtxt")
    if version is None:
        client = grpc.InferenceServerClient(url=url)
        index = client.get_model_repository_index(as_json=True).get("models", [])
        client.close()
        ready = [int(m["version"]) for m in index
                 if m.get("name") == MODEL_NAME and m.get("state") == "READY"]
        if not ready:
            raise SystemExit(f"no ready version of {MODEL_NAME} at {url}; pass --version")
        version = max(ready)
    onnx = repo / MODEL_NAME / str(version) / "model.onnx"
    if not onnx.is_file():
        raise SystemExit(f"{onnx} is missing: onnxruntime must run the version Triton serves")
    return Target(url, version, onnx, config, {"kind": f"served version {version}"})
