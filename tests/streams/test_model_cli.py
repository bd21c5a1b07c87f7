"""`factory model list` says what Triton serves now and where the router sends the
workers, asked of the real services, and says so when it cannot ask them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpc

from infra.local.base import free_port
from streams.clients.router import ModelRouter
from streams.dataplane.scoring import MODEL_NAME
from streams.settings import REPO_ROOT


def model_list(tmp_path: Path, **env: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "streams.jobs.cli", "model", "list"], cwd=REPO_ROOT, text=True,
        capture_output=True, timeout=120,
        env={**os.environ, "FACTORY_STATE_DIR": str(tmp_path / "state"),
             "FACTORY_REGISTRY_DIR": str(tmp_path / "registry"), **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()


@pytest.mark.integration
def test_model_list_shows_the_ready_versions_and_the_route(live_stack: Any,
                                                          tmp_path: Path) -> None:
    triton, redis_url = live_stack.endpoints.triton, live_stack.endpoints.redis
    router = ModelRouter(redis_url, MODEL_NAME)
    saved = router.client.hgetall(router.key)
    try:
        route = router.promote(1)
        lines = model_list(tmp_path, TRITON_URL=triton, REDIS_URL=redis_url)
    finally:
        router.client.delete(router.key)
        if saved:
            router.client.hset(router.key, mapping=saved)
        router.close()
    client = grpc.InferenceServerClient(triton)
    ready = sorted(int(m["version"]) for m in
                   client.get_model_repository_index(as_json=True)["models"]
                   if m.get("name") == MODEL_NAME and m.get("state") == "READY")
    client.close()
    assert 1 in ready
    assert (f"Triton {triton}: {MODEL_NAME} versions READY: "
            f"{', '.join(map(str, ready))}") in lines
    assert f"route: serving 1, shadow none (generation {route.generation})" in lines


def test_model_list_says_when_it_cannot_ask_the_services(tmp_path: Path) -> None:
    port = free_port()  # nothing listens on it
    lines = model_list(tmp_path, TRITON_URL=f"127.0.0.1:{port}",
                       REDIS_URL=f"redis://127.0.0.1:{port}")
    assert f"Triton 127.0.0.1:{port}: not reachable (InferenceServerException)" in lines
    assert "route: Redis not reachable (ConnectionError)" in lines
