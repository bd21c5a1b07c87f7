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

    def decide(self, score: float, event_time: float = 0.0) -> Decision:
        if score >= self.block_at:
            return "block"
        if score >= self.review_at:
            return "review"
        return "approve"

    def decide_many(self, scores: np.ndarray, event_times: np.ndarray) -> list[Decision]:
        """:meth:`decide` of each score, over the whole array."""
        names = np.array(["approve", "review", "block"])
        level = (scores >= self.review_at).astype(np.int8) + (scores >= self.block_at)
        return names[level].tolist()


class ReviewBudget:
    """Decisions under a daily review budget: at most ``reviews_per_day`` reviews a day.

    Blocking stays a fixed threshold (``block_at``). Reviews go to the transactions
    scoring at or above a threshold learnt from the previous event day: the score that
    ``reviews_per_day`` of that day's transactions reached, so that a day like it fills
    the budget with its riskiest transactions; once a day's budget is spent, the rest of
    that day is approved. The first day, with nothing to learn from, reviews at
    ``review_at``. A worker owns a share of the partitions, so it is given the same share
    of the budget (``share``).
    """

    def __init__(self, reviews_per_day: int, block_at: float = 0.9, review_at: float = 0.5,
                 share: float = 1.0, sample: int = 20_000) -> None:
        if reviews_per_day < 0 or not 0.0 < share <= 1.0:
            raise ValueError("reviews_per_day must be >= 0 and share in (0, 1]")
        self.budget = reviews_per_day * share
        self.block_at = block_at
        self.threshold = review_at
        self.sample = sample
        self.day: int | None = None
        self.used = 0
        self._scores: list[float] = []
        self._seen = 0
        self._rng = np.random.default_rng(0)

    def _new_day(self, day: int) -> None:
        if self.day is not None and self._scores and self._seen:
            # The score reached by `budget` of yesterday's transactions, estimated from
            # a uniform sample of them.
            rank = self.budget / self._seen * len(self._scores)
            ordered = np.sort(np.asarray(self._scores))[::-1]
            position = int(np.clip(np.ceil(rank) - 1, 0, len(ordered) - 1))
            self.threshold = float(ordered[position]) if rank >= 1 else float(ordered[0])
        self.day, self.used, self._scores, self._seen = day, 0, [], 0

    def decide(self, score: float, event_time: float) -> Decision:
        day = int(event_time // 86400)
        if day != self.day:
            self._new_day(day)
        self._seen += 1
        if len(self._scores) < self.sample:
            self._scores.append(score)
        elif (slot := int(self._rng.integers(0, self._seen))) < self.sample:
            self._scores[slot] = score
        if score >= self.block_at:
            return "block"
        if score >= self.threshold and self.used < self.budget:
            self.used += 1
            return "review"
        return "approve"

    def decide_many(self, scores: np.ndarray, event_times: np.ndarray) -> list[Decision]:
        """:meth:`decide` of each score in order (the budget is spent in arrival order)."""
        decide = self.decide
        return [decide(s, t) for s, t in zip(scores.tolist(), event_times.tolist(),
                                             strict=True)]


class TritonScorer:
    """Async gRPC client of ``fraud_detector``; retries with backoff and never drops a batch."""

    def __init__(self, url: str, model: str = MODEL_NAME, max_backoff_s: float = 2.0,
                 on_error=None, request_rows: int = 1024,  # noqa: ANN001 - plain callback
                 in_flight: int = 4) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._grpc = grpcclient
        self.url = url
        self.model = model
        self.max_backoff_s = max_backoff_s
        self.on_error = on_error
        self.client = grpcclient.InferenceServerClient(url=url)
        self.request_rows = request_rows
        self.in_flight = asyncio.Semaphore(in_flight)
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

        The batch goes out as requests of at most ``request_rows`` rows, up to
        ``in_flight`` of them at once (over every batch of this client), which Triton's
        dynamic batcher may merge again. Each request retries with backoff until it
        succeeds, or raises the last error after ``attempts`` failures when given.
        """
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"features must be [n, {self.n_features}], got {list(features.shape)}"
            )
        batch = np.ascontiguousarray(features, dtype=np.float32)
        if len(batch) <= self.request_rows:
            return await self._request(batch, version, attempts)
        parts = [batch[i:i + self.request_rows] for i in range(0, len(batch), self.request_rows)]
        results = await asyncio.gather(*(self._request(p, version, attempts) for p in parts))
        return np.concatenate(results)

    async def _request(self, batch: np.ndarray, version: int,
                       attempts: int | None) -> np.ndarray:
        async with self.in_flight:
            return await self._infer(batch, version, attempts)

    async def _infer(self, batch: np.ndarray, version: int,
                     attempts: int | None) -> np.ndarray:
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
