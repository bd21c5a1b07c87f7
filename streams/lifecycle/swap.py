"""Hot swap and rollback of ``fraud_detector`` versions in Triton, through the router.

A swap from N to N+1 never lets a request fail: N+1 is loaded beside N (explicit model
control, a load request that names both versions), shadows N until enough rows carry
its scores in the feature log, is promoted in the router (every batch a worker starts
afterwards goes to N+1, whole), and N is unloaded only once every live worker has
acknowledged the new route. N's files stay in the repository, so a rollback loads N
again and promotes it the same way, once :func:`compare_live` finds N+1 worse on the
rows it scored live whose labels have matured.

With several Tritons (``TRITON_URL`` a comma-separated list) every load and unload goes
to every endpoint, and N+1 is routed to only once every endpoint reports it READY: a
worker may send any request to any endpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import Registry
from models.triton_config import MODEL_NAME
from streams.clients.router import ModelRouter, Route, RouteBusy
from streams.clients.triton_fleet import endpoint_label, triton_urls
from streams.lifecycle.model_events import ModelEvents
from streams.lifecycle.retrain_inputs import FeatureLogTail, LabelBook
from streams.lifecycle.retrain_policy import RollbackVerdict, ShadowStats, rollback_verdict

log = logging.getLogger(__name__)


class SwapError(RuntimeError):
    """A swap that stopped before promotion; the previous version still serves."""


class SwapBusy(SwapError):
    """The route is held by another swap or rollback, or no longer serves the version
    the caller meant to replace; nothing was changed."""


@dataclass(frozen=True)
class SwapConfig:
    """How long a swap waits for each of its stages.

    Attributes
    ----------
    shadow_rows
        Shadow-scored rows in the feature log before promotion.
    shadow_timeout_s
        Promote anyway after this long (wall seconds) unless the shadow mostly failed.
    shadow_idle_s
        Promote as soon as no shadow row was logged for this long (the traffic stopped,
        as at the end of a replay): waiting for the timeout would only delay the swap.
    drain_timeout_s
        Longest wait for every live worker to acknowledge the new route; N stays
        loaded when it passes.
    poll_s
        How often the feature log and the acknowledgements are read.
    """

    shadow_rows: int = 2000
    shadow_timeout_s: float = 120.0
    shadow_idle_s: float = 20.0
    drain_timeout_s: float = 60.0
    poll_s: float = 0.5


@dataclass
class SwapReport:
    """What one swap or rollback did, and how long each stage took (wall seconds)."""

    old: int
    new: int
    promoted: bool = False
    drained: bool = False
    unloaded: bool = False
    generation: int = 0
    shadow: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0
    shadow_seconds: float = 0.0
    drain_seconds: float = 0.0
    seconds: float = 0.0

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def score_onnx(path: Path | str, features: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Scores of ``features`` from an ONNX file, with onnxruntime on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    x = np.ascontiguousarray(features, np.float32)
    if not len(x):
        return np.zeros(0)
    parts = [session.run([output], {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(parts).reshape(len(x)).astype(np.float64)


def triton_loader(triton_url: str, repo_dir: Path) -> Callable[[list[int]], None]:
    """``load(versions)``: exactly those versions of the model loaded in Triton, on every
    endpoint of ``triton_url`` (one URL or several, comma-separated).

    Every endpoint is asked even when one fails, so that an unload after a drain leaves
    no endpoint behind because another was down; the failures are raised together.
    """
    from streams.clients.triton_models import load_model

    urls = triton_urls(triton_url)

    def load(versions: list[int]) -> None:
        failed = []
        for url in urls:
            try:
                load_model(url, sorted(set(versions)), repo=repo_dir)
            except Exception as exc:  # noqa: BLE001 - the others are still asked
                failed.append(f"{endpoint_label(url)}: {exc}")
        if failed:
            raise RuntimeError(f"versions {sorted(set(versions))} not loaded on "
                               f"{len(failed)} of {len(urls)} Triton endpoint(s): "
                               + "; ".join(failed))

    return load


def triton_ready_versions(triton_url: str, model: str = MODEL_NAME) -> list[int]:
    """Versions of ``model`` that Triton reports READY, ascending; with several endpoints
    (comma-separated), those READY on every one of them (raises when one is down)."""
    import tritonclient.grpc as grpcclient

    ready: set[int] | None = None
    for url in triton_urls(triton_url):
        with grpcclient.InferenceServerClient(url=url) as client:
            index = client.get_model_repository_index(as_json=True, client_timeout=10.0)
        here = {int(m["version"]) for m in index.get("models", [])
                if m.get("name") == model and m.get("state") == "READY" and "version" in m}
        ready = here if ready is None else ready & here
    return sorted(ready or ())


def compare_live(tail: FeatureLogTail, book: LabelBook, new: int, old_onnx: Path, now: float,
                 *, features: list[str], ap_tolerance: float, cp100_tolerance: float,
                 min_rows: int, min_positives: int) -> RollbackVerdict | None:
    """The promoted version ``new`` against its predecessor on the rows ``new`` scored
    live whose labels are known by ``now``: the logged scores against the old graph's
    scores of the logged features. ``None`` until ``min_rows`` such rows exist."""
    # The delayed labels only: investigators' feedback covers the cards the new model
    # itself ranked first, no fair sample for judging it against the old one.
    labels = book.frame[(book.frame["known_at"] <= now) & ~book.frame["feedback"]]
    live = tail.index[tail.index["model_version"] == new].merge(labels, on="tx_id")
    if len(live) < min_rows:
        return None
    rows = tail.rows(live["tx_id"].to_numpy()).merge(live[["tx_id", "is_fraud"]], on="tx_id")
    old_scores = score_onnx(old_onnx, rows[features].to_numpy(np.float32))
    return rollback_verdict(
        rows["score"].to_numpy(), old_scores, rows["is_fraud"].to_numpy(),
        rows["card_id"].to_numpy(), np.floor(rows["event_time"].to_numpy() / 86400),
        ap_tolerance=ap_tolerance, cp100_tolerance=cp100_tolerance, min_rows=min_rows,
        min_positives=min_positives)


class ModelSwapper:
    """Loads, shadows, promotes, drains and unloads versions; keeps the registry in step.

    Parameters
    ----------
    load
        ``load(versions)`` leaves exactly ``versions`` loaded on every Triton endpoint
        (:func:`triton_loader`).
    ready
        The versions READY now on every endpoint (:func:`triton_ready_versions`); a
        version is routed to only once it is among them.
    router, registry, events
        The route workers follow, the model registry, the ``model-events`` publisher.
    shadow_stats
        ``shadow_stats(version)``: agreement of that shadow with the serving model over
        the rows logged so far (the caller reads the feature log); ``None`` for a
        swapper that only makes a version serve (:meth:`ensure_serving`).
    repo_dir
        The Triton repository whose graphs are checked before a load.
    """

    def __init__(self, *, load: Callable[[list[int]], None], ready: Callable[[], list[int]],
                 router: ModelRouter, registry: Registry, events: ModelEvents,
                 shadow_stats: Callable[[int], ShadowStats] | None = None,
                 config: SwapConfig | None = None, repo_dir: Path | None = None) -> None:
        self.load, self.ready = load, ready
        self.router, self.registry, self.events = router, registry, events
        self.shadow_stats = shadow_stats
        self.config = config or SwapConfig()
        self.repo_dir = repo_dir

    def check_contract(self, version: int) -> None:
        """Raise :class:`SwapError` unless the version's graph honours ``config.pbtxt``.

        Triton never sees a graph that fails here, whether or not it went through the
        gate (which checks the same first).
        """
        if self.repo_dir is None:
            return
        from models.export import check_onnx
        from models.triton_config import read_model_config

        model_dir = self.repo_dir / MODEL_NAME
        try:
            check_onnx(model_dir / str(version) / "model.onnx",
                       read_model_config(model_dir / "config.pbtxt"))
        except Exception as exc:  # noqa: BLE001 - any unreadable graph stops here
            raise SwapError(f"version {version} does not fit the model contract: "
                            f"{type(exc).__name__}: {exc}"[:500]) from exc

    def ensure_serving(self, champion: int) -> Route:
        """Make the route serve ``champion`` (loaded first when it is not), no shadow."""
        ready = self.ready()
        if champion not in ready:
            self.load([*ready, champion])
        route = self.router.route()
        if route is None or route.serving != champion or route.shadow:
            if route is not None:
                log.warning("route %s does not match the champion %d; routing to it",
                            route, champion)
            route = self.router.promote(champion)
        return route

    @contextmanager
    def holding_route(self, what: str, serving: int) -> Iterator[None]:
        """The route's lock for one swap or rollback (:meth:`ModelRouter.lock`), and the
        check that it still serves ``serving``; :class:`SwapBusy` otherwise."""
        try:
            with self.router.lock(what):
                route = self.router.route()
                if route is not None and route.serving != serving:
                    raise SwapBusy(f"the route serves {route.serving}, not {serving}: "
                                   "another process changed it")
                yield
        except RouteBusy as exc:
            raise SwapBusy(str(exc)) from exc

    def swap(self, old: int, new: int, *, reason: str,
             cycle_started: float | None = None) -> SwapReport:
        """Replace ``old`` by ``new``; raises :class:`SwapError` before promotion
        (:class:`SwapBusy` when another swap holds the route)."""
        with self.holding_route(f"swap {old} -> {new}", old):
            return self._swap(old, new, reason=reason, cycle_started=cycle_started)

    def _swap(self, old: int, new: int, *, reason: str,
              cycle_started: float | None) -> SwapReport:
        started = time.monotonic()
        report = SwapReport(old, new)
        self.check_contract(new)
        self._load_both(old, new, report)
        self.registry.update_status(new, "shadow", f"shadowing {old}")
        route = self.router.set_shadow(new)
        self.events.publish("shadow_started", version=new, serving=old,
                            generation=route.generation)
        clock = time.monotonic()
        stats = self._wait_for_shadow(new)
        report.shadow, report.shadow_seconds = stats.to_record(), time.monotonic() - clock
        if stats.failed > stats.rows:
            route = self.router.promote(old)
            if self.router.wait_drained(route.generation, self.config.drain_timeout_s):
                self._load_quietly([old])
            self.registry.update_status(new, "rejected",
                                        f"failed in shadow: {stats.failed} of "
                                        f"{stats.failed + stats.rows} shadow calls")
            raise SwapError(f"version {new} failed {stats.failed} shadow calls; "
                            f"{old} keeps serving")
        route = self.router.promote(new)
        self.registry.set_champion(new, reason)
        report.promoted, report.generation = True, route.generation
        cycle = time.monotonic() - cycle_started if cycle_started is not None else None
        self.events.publish("promoted", version=new, previous=old, reason=reason,
                            generation=route.generation, shadow=report.shadow,
                            shadow_seconds=report.shadow_seconds,
                            load_seconds=report.load_seconds,
                            swap_seconds=time.monotonic() - started, cycle_seconds=cycle)
        self._drain_and_unload(route, keep=new, drop=old, report=report)
        report.seconds = time.monotonic() - started
        return report

    def roll_back(self, bad: int, good: int, *, reason: str,
                  figures: dict[str, Any] | None = None) -> SwapReport:
        """Serve ``good`` again in place of ``bad``, which becomes ``rolled_back``."""
        with self.holding_route(f"rollback {bad} -> {good}", bad):
            return self._roll_back(bad, good, reason=reason, figures=figures)

    def _roll_back(self, bad: int, good: int, *, reason: str,
                   figures: dict[str, Any] | None) -> SwapReport:
        started = time.monotonic()
        report = SwapReport(bad, good)
        self._load_both(bad, good, report)
        route = self.router.promote(good)
        self.registry.set_champion(good, f"rollback: {reason}", previous_status="rolled_back")
        report.promoted, report.generation = True, route.generation
        self.events.publish("rollback", version=good, previous=bad, reason=reason,
                            generation=route.generation, **(figures or {}))
        self._drain_and_unload(route, keep=good, drop=bad, report=report)
        report.seconds = time.monotonic() - started
        return report

    def _load_both(self, serving: int, other: int, report: SwapReport) -> None:
        """``other`` loaded beside ``serving``, and READY on every endpoint: only then
        may the route send a request to it."""
        clock = time.monotonic()
        try:
            self.load([serving, other])
            ready = self.ready()
            if other not in ready:
                raise RuntimeError(f"not READY on every endpoint (READY everywhere: {ready})")
        except Exception as exc:
            self._load_quietly([serving])
            raise SwapError(f"Triton could not load version {other} beside {serving}: "
                            f"{exc}") from exc
        report.load_seconds = time.monotonic() - clock

    def _load_quietly(self, versions: list[int]) -> None:
        try:
            self.load(versions)
        except Exception:  # noqa: BLE001 - the caller reports the first failure
            log.exception("could not load %s again", versions)

    def _wait_for_shadow(self, version: int) -> ShadowStats:
        if self.shadow_stats is None:
            raise SwapError("this swapper has no shadow statistics: it can only route")
        config = self.config
        started = last_growth = time.monotonic()
        rows = -1
        while True:
            stats = self.shadow_stats(version)
            now = time.monotonic()
            if stats.rows > rows:
                rows, last_growth = stats.rows, now
            if stats.rows >= config.shadow_rows:
                return stats
            if now - started >= config.shadow_timeout_s:
                log.warning("shadow of %d: %d rows after %.0f s (wanted %d); promoting",
                            version, stats.rows, config.shadow_timeout_s, config.shadow_rows)
                return stats
            if now - last_growth >= config.shadow_idle_s:
                log.warning("shadow of %d: %d rows, none in the last %.0f s (no traffic; "
                            "wanted %d); promoting", version, stats.rows,
                            config.shadow_idle_s, config.shadow_rows)
                return stats
            time.sleep(config.poll_s)

    def _drain_and_unload(self, route: Route, *, keep: int, drop: int,
                          report: SwapReport) -> None:
        clock = time.monotonic()
        report.drained = self.router.wait_drained(route.generation,
                                                  self.config.drain_timeout_s)
        report.drain_seconds = time.monotonic() - clock
        if not report.drained:
            log.warning("workers did not all reach generation %d in %.0f s; version %d "
                        "stays loaded", route.generation, self.config.drain_timeout_s, drop)
            return
        try:
            self.load([keep])
        except Exception:  # noqa: BLE001 - the new version serves; the old one lingers
            log.exception("could not unload version %d; it stays loaded", drop)
            return
        report.unloaded = True
        self.events.publish("unloaded", version=drop, serving=keep,
                            generation=route.generation, drain_seconds=report.drain_seconds)
