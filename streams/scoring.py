"""Scoring micro-batches through Triton over async gRPC, and decisions from scores.

Tensor names and the model's feature count come from the model configuration Triton
serves (``config.pbtxt`` is their one source); every request names its model version
explicitly so that a swap never mixes versions inside a batch.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from streams.records import Decision

log = logging.getLogger(__name__)
MODEL_NAME = "fraud_detector"


@dataclass(frozen=True)
class DecisionPolicy:
    """Scores at or above ``block_at`` are blocked, at or above ``review_at`` reviewed."""

    review_at: float = 0.5
    block_at: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.review_at <= self.block_at <= 1.0:
            raise ValueError("thresholds must satisfy 0 <= review_at <= block_at <= 1")

    def decide(self, score: float) -> Decision:
        if score >= self.block_at:
            return "block"
        if score >= self.review_at:
            return "review"
        return "approve"


class TritonScorer:
    """Async gRPC client of ``fraud_detector``; retries with backoff and never drops a batch."""

    def __init__(self, url: str, model: str = MODEL_NAME, max_backoff_s: float = 5.0,
                 on_error=None) -> None:  # noqa: ANN001 - plain callback
        import tritonclient.grpc.aio as grpcclient

        self._grpc = grpcclient
        self.url = url
        self.model = model
        self.max_backoff_s = max_backoff_s
        self.on_error = on_error
        self.client = grpcclient.InferenceServerClient(url=url)
        self.input_name = ""
        self.output_name = ""
        self.n_features = 0

    async def connect(self, timeout_s: float = 60.0) -> None:
        """Read tensor names and shapes from the served model configuration."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                config = (await self.client.get_model_config(self.model, as_json=True))["config"]
                break
            except Exception as exc:  # noqa: BLE001
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"Triton model {self.model!r} unavailable: {exc}") from exc
                await asyncio.sleep(0.5)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.n_features = int(config["input"][0]["dims"][-1])

    async def ready_versions(self) -> list[int]:
        """Versions of the model that Triton reports READY, ascending."""
        index = await self.client.get_model_repository_index(as_json=True)
        return sorted(
            int(m["version"]) for m in index.get("models", [])
            if m.get("name") == self.model and m.get("state") == "READY" and "version" in m
        )

    async def score(self, features: np.ndarray, version: int,
                    attempts: int | None = None) -> np.ndarray:
        """Scores of a ``[n, n_features]`` batch from ``version``.

        Retries with backoff until it succeeds, or raises the last error after
        ``attempts`` failures when that is given.
        """
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"features must be [n, {self.n_features}], got {list(features.shape)}"
            )
        batch = np.ascontiguousarray(features, dtype=np.float32)
        backoff = 0.05
        while True:
            try:
                tensor = self._grpc.InferInput(self.input_name, list(batch.shape), "FP32")
                tensor.set_data_from_numpy(batch)
                result = await self.client.infer(
                    self.model, [tensor], model_version=str(version),
                    outputs=[self._grpc.InferRequestedOutput(self.output_name)],
                )
                return result.as_numpy(self.output_name).reshape(-1)
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                if self.on_error is not None:
                    self.on_error(exc)
                if attempts is not None:
                    attempts -= 1
                    if attempts <= 0:
                        raise
                log.warning("Triton call failed (%s); retrying in %.2f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)

    async def close(self) -> None:
        await self.client.close()
