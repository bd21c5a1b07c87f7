"""The versions of ``fraud_detector`` in a Triton model repository, and loading them.

Triton runs with explicit model control: a version serves only once a load request names
it. :func:`load_model` sends that request, with a configuration that serves exactly the
versions given, to every endpoint of ``TRITON_URL``; :func:`published_versions` lists the
versions whose files the repository holds.
"""

from __future__ import annotations

from pathlib import Path

from streams.clients.triton_fleet import triton_urls
from streams.settings import REPO_ROOT

TRITON_REPO = REPO_ROOT / "triton_repo"


def published_versions(repo: Path = TRITON_REPO) -> list[int]:
    model_dir = repo / "fraud_detector"
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / "model.onnx").exists())


def load_model(triton_url: str, versions: list[int], repo: Path = TRITON_REPO) -> None:
    """Load exactly ``versions`` of ``fraud_detector`` into Triton (explicit control), on
    each endpoint of ``triton_url`` (one, or several comma-separated)."""
    import tritonclient.grpc as grpcclient

    from models.triton_config import load_request_config

    config = load_request_config(repo / "fraud_detector" / "config.pbtxt", versions)
    for url in triton_urls(triton_url):
        client = grpcclient.InferenceServerClient(url=url)
        client.load_model("fraud_detector", config=config)
        for version in versions:
            if not client.is_model_ready("fraud_detector", str(version)):
                raise RuntimeError(f"fraud_detector version {version} did not become ready")
