"""Scoring micro-batches through Triton over async gRPC, and decisions from scores.

Requests go to one Triton or are spread over several (:mod:`streams.clients.triton_fleet`).
Tensor names and the model's feature count come from the model configuration Triton
serves (``config.pbtxt`` is their one source); every request names its model version
explicitly so that a swap never mixes versions inside a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from streams.clients.triton_fleet import Endpoint, EndpointPool, endpoint_label, triton_urls
from streams.records import Decision

if TYPE_CHECKING:
    from streams.dataplane.metrics import WorkerMetrics

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
    """Async gRPC client of ``fraud_detector`` on one Triton or several; retries with
    backoff and never drops a batch.

    ``url`` names one endpoint or several, comma-separated (:mod:`streams.clients.triton_fleet`).
    Requests take turns over the endpoints that are up; a request that fails on one is
    sent again at once to another, and waits its backoff only once it failed on every
    endpoint worth trying. A failed endpoint is skipped until a health probe (server
    live, and the model versions the traffic asks for READY) finds it serving again.
    With ``metrics`` (:class:`streams.dataplane.metrics.WorkerMetrics`) each endpoint's requests,
    failed attempts and state are exported, labelled ``host:port``.
    """

    def __init__(self, url: str, model: str = MODEL_NAME, max_backoff_s: float = 2.0,
                 on_error=None, request_rows: int = 1024,  # noqa: ANN001 - plain callback
                 in_flight: int = 4, metrics: WorkerMetrics | None = None,
                 health_every_s: float = 1.0, probe_timeout_s: float = 2.0,
                 request_timeout_s: float = 10.0,
                 clients: dict[str, Any] | None = None) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._grpc = grpcclient
        self.url = url
        self.model = model
        self.max_backoff_s = max_backoff_s
        self.on_error = on_error
        self.pool = EndpointPool(triton_urls(url), max_pause_s=max(5.0, max_backoff_s))
        # One aio client an endpoint (``clients`` replaces them, as a test does).
        self.clients = clients or {e.url: grpcclient.InferenceServerClient(url=e.url)
                                   for e in self.pool.endpoints}
        self.metrics = metrics
        self.health_every_s = health_every_s
        self.probe_timeout_s = probe_timeout_s
        # A Triton that hangs (accepts the connection, never answers) fails the request
        # after this long, as one that refuses it does: it goes to another endpoint.
        self.request_timeout_s = request_timeout_s
        self.request_rows = request_rows
        self.in_flight = asyncio.Semaphore(in_flight)
        self.input_name = ""
        self.output_name = ""
        self.n_features = 0
        self._asked: dict[int, float] = {}
        self._health: asyncio.Task[None] | None = None
        for endpoint in self.pool.endpoints:
            self._export_state(endpoint)

    async def connect(self, timeout_s: float = 60.0) -> None:
        """Read tensor names and shapes from the served model configuration (of the first
        endpoint that answers), and start the endpoints' health probes."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            try:
                config = await self._model_config()
                break
            except Exception as exc:  # noqa: BLE001
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"Triton model {self.model!r} unavailable: {exc}") from exc
                await asyncio.sleep(0.5)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.n_features = int(config["input"][0]["dims"][-1])
        if self._health is None:
            self._health = asyncio.create_task(self._watch_endpoints())

    async def _model_config(self) -> dict:
        error: Exception | None = None
        for endpoint in self.pool.endpoints:
            try:
                reply = await self.clients[endpoint.url].get_model_config(
                    self.model, as_json=True, client_timeout=self.probe_timeout_s)
                return reply["config"]
            except Exception as exc:  # noqa: BLE001 - the next endpoint may answer
                error = exc
        assert error is not None
        raise error

    async def ready_versions(self) -> list[int]:
        """Versions of the model READY on every endpoint that serves it, ascending (an
        endpoint that is down or has nothing loaded is left out; raises when none
        answers)."""
        found: list[set[int]] = []
        error: Exception | None = None
        for endpoint in self.pool.endpoints:
            try:
                index = await self.clients[endpoint.url].get_model_repository_index(
                    as_json=True, client_timeout=self.probe_timeout_s)
            except Exception as exc:  # noqa: BLE001 - an endpoint that is down serves nothing
                error = exc
                continue
            found.append({int(m["version"]) for m in index.get("models", [])
                          if m.get("name") == self.model and m.get("state") == "READY"
                          and "version" in m})
        if not found:
            assert error is not None
            raise error
        serving = [versions for versions in found if versions]
        return sorted(set.intersection(*serving)) if serving else []

    async def score(self, features: np.ndarray, version: int,
                    attempts: int | None = None) -> np.ndarray:
        """Scores of a ``[n, n_features]`` batch from ``version``.

        The batch goes out as requests of at most ``request_rows`` rows, up to
        ``in_flight`` of them at once (over every batch of this client), which Triton's
        dynamic batcher may merge again. Each request retries until it succeeds, or
        raises the last error after ``attempts`` failed attempts when given.
        """
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"features must be [n, {self.n_features}], got {list(features.shape)}"
            )
        self._asked[version] = time.monotonic()
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
        tried: set[str] = set()
        waited = False
        last: Exception | None = None
        while True:
            endpoint = self.pool.pick(tried)
            if endpoint is None:
                # Failed on every endpoint worth trying: the request waits, as it did
                # with one Triton.
                if self.metrics is not None and not waited:
                    self.metrics.triton_failed_requests.inc()
                waited = True
                log.warning("Triton call failed on %s (%s); retrying in %.2f s",
                            ", ".join(sorted(endpoint_label(u) for u in tried)), last,
                            backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                tried.clear()
                continue
            sent_at = self.pool.clock()
            try:
                tensor = self._grpc.InferInput(self.input_name, list(batch.shape), "FP32")
                tensor.set_data_from_numpy(batch)
                result = await asyncio.wait_for(self.clients[endpoint.url].infer(
                    self.model, [tensor], model_version=str(version),
                    outputs=[self._grpc.InferRequestedOutput(self.output_name)],
                ), self.request_timeout_s)
            except Exception as exc:  # noqa: BLE001 - every failure is retried
                last = exc
                if self.on_error is not None:
                    self.on_error(exc)
                self._failed(endpoint, f"version {version}: {exc}")
                if attempts is not None:
                    attempts -= 1
                    if attempts <= 0:
                        raise
                tried.add(endpoint.url)
                continue
            if self.metrics is not None:
                self.metrics.triton_endpoint_requests.labels(endpoint.label).inc()
            if self.pool.succeeded(endpoint, sent_at):
                log.info("Triton %s answers again", endpoint.label)
                self._export_state(endpoint)
            return result.as_numpy(self.output_name).reshape(-1)

    def _failed(self, endpoint: Endpoint, why: str) -> None:
        if self.metrics is not None:
            self.metrics.triton_endpoint_failures.labels(endpoint.label).inc()
        if self.pool.failed(endpoint):
            others = len(self.pool.up_endpoints())
            log.warning("Triton %s failed (%s); skipped while %d other endpoint(s) serve, "
                        "probed again in %.2f s", endpoint.label, why[:300], others,
                        endpoint.next_probe - self.pool.clock())
            self._export_state(endpoint)

    def _export_state(self, endpoint: Endpoint) -> None:
        if self.metrics is not None:
            self.metrics.triton_endpoint_up.labels(endpoint.label).set(1 if endpoint.up else 0)

    def asked_versions(self, within_s: float) -> list[int]:
        """The versions requests asked for in the last ``within_s`` seconds."""
        since = time.monotonic() - within_s
        return sorted(v for v, at in self._asked.items() if at >= since)

    async def probe(self, endpoint: Endpoint) -> bool:
        """One health probe: the server live, and (for a resting endpoint) every version
        the traffic asked for lately READY; the pool and the metrics are told.

        Not the server's readiness: with strict readiness a Triton reports not ready
        while any model loads, as every swap makes it do, though the versions already
        loaded keep serving; the versions' own readiness is what a request needs.
        """
        client = self.clients[endpoint.url]
        sent_at = self.pool.clock()
        try:
            ready = await client.is_server_live(client_timeout=self.probe_timeout_s)
            versions = [] if endpoint.up else self.asked_versions(2 * self.health_every_s)
            for version in versions:
                ready = ready and await client.is_model_ready(
                    self.model, str(version), client_timeout=self.probe_timeout_s)
            why = "not live" if not versions else f"versions {versions} not all READY"
        except Exception as exc:  # noqa: BLE001 - an endpoint that does not answer is down
            ready, why = False, f"probe: {type(exc).__name__}"
        if not ready:
            self._failed(endpoint, why)
            return False
        if self.pool.succeeded(endpoint, sent_at):
            log.info("Triton %s is ready again; it takes requests", endpoint.label)
            self._export_state(endpoint)
        return True

    async def check_endpoints(self, every: bool = False) -> None:
        """Probe the resting endpoints that are due (and, with ``every``, those up)."""
        targets = self.pool.due() + (self.pool.up_endpoints() if every else [])
        await asyncio.gather(*(self.probe(endpoint) for endpoint in targets))

    async def _watch_endpoints(self) -> None:
        """Resting endpoints probed when due, the others every ``health_every_s``."""
        last_full = 0.0
        while True:
            now = time.monotonic()
            full = now - last_full >= self.health_every_s
            try:
                await self.check_endpoints(every=full)
            except Exception:  # noqa: BLE001 - the probes must outlive any one failure
                log.exception("Triton health probes failed; trying again")
            if full:
                last_full = now
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        for client in self.clients.values():
            await client.close()
