"""The serving guard: the routed model versions stay loaded in Triton, without a person.

A Triton that restarts (a crashed process, a rescheduled pod, a new replica) comes back
with no model loaded, since versions are loaded explicitly; a failed load leaves a
version ``UNAVAILABLE``. Scoring workers keep retrying their requests, so the line only
stops, it loses nothing, but nothing in a worker loads a model. The guard does, once a
second:

1. the route: when Redis has none (a Redis that came back empty) and the registry has a
   champion, the champion is routed again (the registry is the route's source of truth);
2. every Triton endpoint: the route's serving version and its shadow are READY, else they
   are loaded from the repository beside what is already loaded (nothing is unloaded:
   a swap in progress keeps its versions), retried with a growing pause while it fails.

``factory_serving_ready`` is 1 while every routed version is READY on every endpoint,
and ``FactoryServingModelDown`` fires while it is 0; each repair is counted
(``factory_serving_repairs_total``) and published on ``model-events``
(``serving_restored``, ``route_restored``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from models.registry import Registry
from streams.clients.router import ModelRouter, Route
from streams.clients.triton_fleet import endpoint_label
from streams.lifecycle.model_events import ModelEvents

log = logging.getLogger(__name__)

Loader = Callable[[str, list[int]], None]
"""``load(triton_url, versions)``: exactly ``versions`` loaded on that endpoint."""
ReadyVersions = Callable[[str], list[int]]
"""``ready(triton_url)``: the versions READY on that endpoint (raises when it is down)."""


class GuardMetrics:
    """The guard's gauges and counters, on a registry the caller serves."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ready = Gauge("factory_serving_ready",
                           "1 while every routed model version is READY on every Triton "
                           "endpoint", registry=registry)
        self.repairs = Counter("factory_serving_repairs",
                               "Routed versions loaded again, or routes restored, by kind",
                               ["kind"], registry=registry)
        for kind in ("load", "route"):
            self.repairs.labels(kind=kind)
        self.down_seconds = Gauge("factory_serving_down_seconds",
                                  "Seconds since a routed version was last seen READY "
                                  "everywhere (0 while it is)", registry=registry)


@dataclass
class EndpointState:
    """What the guard knows of one Triton endpoint."""

    url: str
    down_since: float | None = None
    next_try: float = 0.0
    pause_s: float = 1.0
    last_error: str = ""

    @property
    def label(self) -> str:
        """``host:port``, as logs and model events show it (never a credential)."""
        return endpoint_label(self.url)


@dataclass
class GuardReport:
    """One check: the route it enforced and what it repaired."""

    route: Route | None
    ready: bool
    loaded: dict[str, list[int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    route_restored: bool = False


class ServingGuard:
    """Keeps the routed versions READY on every endpoint; see the module docstring."""

    def __init__(self, *, router: ModelRouter, registry: Registry, triton_urls: list[str],
                 load: Loader, ready: ReadyVersions, events: ModelEvents | None = None,
                 metrics: GuardMetrics | None = None, interval_s: float = 1.0,
                 max_pause_s: float = 15.0) -> None:
        if not triton_urls:
            raise ValueError("the guard needs at least one Triton endpoint")
        self.router, self.registry = router, registry
        self.load, self.ready_versions = load, ready
        self.events, self.metrics = events, metrics
        self.interval_s, self.max_pause_s = interval_s, max_pause_s
        self.endpoints = [EndpointState(url) for url in triton_urls]
        self.repairs = 0

    def restore_route(self) -> tuple[Route | None, bool]:
        """The route; routed to the registry's champion when Redis has none."""
        route = self.router.route()
        if route is not None:
            return route, False
        champion = self.registry.champion()
        if champion is None:
            return None, False
        route = self.router.promote(champion)
        log.warning("no route in Redis (an empty or restarted store): routing to the "
                    "registry's champion, version %d", champion)
        if self.metrics is not None:
            self.metrics.repairs.labels(kind="route").inc()
        if self.events is not None:
            self.events.publish("route_restored", version=champion,
                                generation=route.generation)
        return route, True

    def check(self) -> GuardReport:
        """One pass over the route and every endpoint."""
        route, restored = self.restore_route()
        report = GuardReport(route, ready=True, route_restored=restored)
        if route is None:
            # No champion yet: workers score with the newest READY version.
            self._set_ready(True, time.monotonic())
            return report
        wanted = sorted({route.serving, route.shadow} - {0})
        now = time.monotonic()
        for endpoint in self.endpoints:
            ok = self._check_endpoint(endpoint, wanted, now, report)
            report.ready = report.ready and ok
        self._set_ready(report.ready, now)
        return report

    def _check_endpoint(self, endpoint: EndpointState, wanted: list[int], now: float,
                        report: GuardReport) -> bool:
        try:
            ready = self.ready_versions(endpoint.url)
        except Exception as exc:  # noqa: BLE001 - an endpoint that is down is not ready
            self._failed(endpoint, now, f"unreachable: {type(exc).__name__}", report)
            return False
        missing = [v for v in wanted if v not in ready]
        if not missing:
            if endpoint.down_since is not None:
                log.info("Triton %s serves %s again", endpoint.label, wanted)
            endpoint.down_since, endpoint.pause_s, endpoint.next_try = None, 1.0, 0.0
            return True
        if endpoint.down_since is None:
            endpoint.down_since = now
            log.warning("Triton %s does not have routed version(s) %s READY (it has %s); "
                        "loading them from the repository", endpoint.label, missing, ready)
        if now < endpoint.next_try:
            return False
        started = time.monotonic()
        try:
            self.load(endpoint.url, sorted(set(ready) | set(wanted)))
        except Exception as exc:  # noqa: BLE001 - retried after a pause
            self._failed(endpoint, now, f"load failed: {exc}"[:300], report)
            return False
        down_for = time.monotonic() - endpoint.down_since
        self.repairs += 1
        report.loaded[endpoint.url] = missing
        log.warning("Triton %s: loaded routed version(s) %s again (serving was down %.1f s)",
                    endpoint.label, missing, down_for)
        if self.metrics is not None:
            self.metrics.repairs.labels(kind="load").inc()
        if self.events is not None:
            self.events.publish("serving_restored", versions=missing, endpoint=endpoint.label,
                                down_seconds=round(down_for, 3),
                                load_seconds=round(time.monotonic() - started, 3))
        endpoint.down_since, endpoint.pause_s, endpoint.next_try = None, 1.0, 0.0
        return True

    def _failed(self, endpoint: EndpointState, now: float, error: str,
                report: GuardReport) -> None:
        if endpoint.down_since is None:
            endpoint.down_since = now
        if error != endpoint.last_error:
            log.warning("Triton %s: %s; retrying in %.0f s", endpoint.label, error,
                        endpoint.pause_s)
        endpoint.last_error = error
        report.failed[endpoint.url] = error
        endpoint.next_try = now + endpoint.pause_s
        endpoint.pause_s = min(endpoint.pause_s * 2, self.max_pause_s)

    def _set_ready(self, ready: bool, now: float) -> None:
        if self.metrics is None:
            return
        self.metrics.ready.set(1 if ready else 0)
        since = [e.down_since for e in self.endpoints if e.down_since is not None]
        self.metrics.down_seconds.set(now - min(since) if since else 0.0)

    def run(self, stop: threading.Event) -> None:
        """Check every ``interval_s`` until ``stop`` is set; a failed check is logged."""
        while not stop.is_set():
            try:
                self.check()
            except Exception:  # noqa: BLE001 - Redis may be down for a while too
                log.exception("serving guard: check failed; trying again")
                if self.metrics is not None:
                    self.metrics.ready.set(0)
            stop.wait(self.interval_s)

    def start(self, stop: threading.Event) -> threading.Thread:
        """:meth:`run` on a daemon thread."""
        thread = threading.Thread(target=self.run, args=(stop,), name="serving-guard",
                                  daemon=True)
        thread.start()
        return thread


def triton_guard(*, redis_url: str, triton_urls: list[str], registry_dir: Path,
                 repo_dir: Path, events: ModelEvents | None = None,
                 metrics: GuardMetrics | None = None, interval_s: float = 1.0
                 ) -> ServingGuard:
    """A guard on real services: the route in Redis, the registry, Triton over gRPC."""
    from streams.clients.triton_models import load_model
    from streams.lifecycle.swap import triton_ready_versions

    return ServingGuard(
        router=ModelRouter(redis_url), registry=Registry(registry_dir, repo_dir=repo_dir),
        triton_urls=triton_urls,
        load=lambda url, versions: load_model(url, versions, repo=repo_dir),
        ready=triton_ready_versions, events=events, metrics=metrics, interval_s=interval_s)
