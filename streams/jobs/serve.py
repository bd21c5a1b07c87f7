"""``factory serve``: the whole factory as one long-running service.

Starts the local services the settings do not name, applies the Feast repository, makes
the registry's champion serve (loaded in Triton and routed; on a first start the newest
published version becomes the champion), then runs a labels worker and a scoring
worker as child processes (restarted should one die) and the retrainer in this process,
and prints a status line: throughput, consumer lag, the serving version and the latest
model events. Ctrl-C or SIGTERM stops the retrainer and the workers cleanly (each
worker commits its state and offsets before it exits); the services keep running, with
their data, until ``factory down``.

The workers take the defaults ``factory worker`` takes (groups ``fraud-factory`` and
``fraud-factory-labels``, metrics ports 8100 and 8101), so a stopped ``factory serve``
continues where it stopped, and so does one after ``factory bootstrap``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.settings import Settings

if TYPE_CHECKING:
    from streams.dataplane.worker import WorkerProcess
    from streams.lifecycle.retrainer import Retrainer
    from streams.lifecycle.serving_guard import ServingGuard

log = logging.getLogger("streams.jobs.serve")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factory serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("live", "strict"), default="live",
                   help="strict: score an event only once the labels known by its time are "
                        "applied (replays of a history, parity); live: at once")
    p.add_argument("--no-retrainer", action="store_true",
                   help="serve the champion only: no drift monitors, no retraining")
    p.add_argument("--schedule-days", type=float, default=7.0,
                   help="retrain after this many days of event time (0: never)")
    p.add_argument("--gate-days", type=int, default=7)
    p.add_argument("--feature-log", type=Path, default=None,
                   help="the scoring worker's feature log (default: <state dir>/feature_log)")
    p.add_argument("--repo", type=Path, default=Settings.from_env().triton_repo,
                   help="the Triton model repository (default: FACTORY_TRITON_REPO, else "
                        "triton_repo/)")
    p.add_argument("--status-every", type=float, default=10.0,
                   help="seconds between status lines")
    p.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                   help="an extra option for both workers, e.g. --worker-arg=--in-flight=8")
    p.add_argument("--log-level", default="info",
                   choices=("error", "warning", "info", "debug"))
    return p


@dataclasses.dataclass
class Status:
    """One status line's figures."""

    scored: float = 0.0
    labels: float = 0.0
    dead: float = 0.0
    triton_errors: float = 0.0
    lag: float = 0.0
    at: float = 0.0


def _sum(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


class Service:
    """The running parts of one ``factory serve`` and their supervision."""

    def __init__(self, args: argparse.Namespace, settings: Settings) -> None:
        self.args, self.settings = args, settings
        self.feature_log = args.feature_log or settings.state_dir / "feature_log"
        self.workers: list[WorkerProcess] = []
        self.retrainer: Retrainer | None = None
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()
        self.last = Status(at=time.monotonic())
        self.restarts = 0
        self.guard: ServingGuard | None = None
        self.guard_thread: threading.Thread | None = None

    def start(self) -> None:
        from infra.local.manager import Stack
        from streams.clients.feast_client import apply_repo
        from streams.dataplane.worker import WorkerProcess, role_defaults
        from streams.topics import kafka_layout

        stack = Stack(self.settings, kafka_layout(self.settings.partitions),
                      triton_repo=self.args.repo)
        self.endpoints = stack.up()
        apply_repo(self.endpoints.redis)
        champion = self.serve_champion()
        print(f"serve: version {champion} serves; feature log {self.feature_log}", flush=True)
        run_dir = self.settings.state_dir / "serve"
        run_dir.mkdir(parents=True, exist_ok=True)
        common: dict[str, Any] = {"env": {"FACTORY_STATE_DIR": str(self.settings.state_dir)},
                  "offset_reset": "latest", "extra_args": list(self.args.worker_arg)}
        labels_group, labels_port = role_defaults("labels", self.settings)
        score_group, score_port = role_defaults("score", self.settings)
        self.workers = [
            WorkerProcess(self.settings, labels_group, role="labels",
                          log_path=str(run_dir / "labels-worker.log"),
                          metrics_port=labels_port, **common),
            WorkerProcess(self.settings, score_group, role="score", mode=self.args.mode,
                          labels_group=labels_group, feature_log=str(self.feature_log),
                          log_path=str(run_dir / "score-worker.log"),
                          metrics_port=score_port, **common),
        ]
        for worker in self.workers:
            worker.start(self.endpoints.kafka)
            assert worker.proc is not None
            print(f"serve: {worker.role} worker up (pid {worker.proc.pid}, group "
                  f"{worker.app_id}, metrics 127.0.0.1:{worker.metrics_port}, log "
                  f"{worker.log_path})", flush=True)
        self.start_metrics()
        self.start_guard()
        if not self.args.no_retrainer:
            self.start_retrainer()

    def serve_champion(self) -> int:
        """The registry's champion loaded and routed (chosen on a first start)."""
        from models.registry import Registry
        from streams.clients.router import ModelRouter
        from streams.lifecycle.champion import choose_champion
        from streams.lifecycle.model_events import ModelEvents
        from streams.lifecycle.swap import ModelSwapper, triton_loader, triton_ready_versions

        registry = Registry(self.settings.model_registry_dir, repo_dir=self.args.repo)
        champion = choose_champion(registry, self.args.repo)
        router = ModelRouter(self.endpoints.redis)
        try:
            ModelSwapper(load=triton_loader(self.endpoints.triton, self.args.repo),
                         ready=lambda: triton_ready_versions(self.endpoints.triton),
                         router=router, registry=registry, events=ModelEvents(None),
                         repo_dir=self.args.repo).ensure_serving(champion)
        finally:
            router.close()
        return champion

    def start_metrics(self) -> None:
        """The retrainer's and the serving guard's metrics on one port (Prometheus job
        ``factory-retrainer``)."""
        from prometheus_client import start_http_server

        from streams.lifecycle.model_events import RetrainerMetrics
        from streams.lifecycle.retrain_policy import TriggerPolicy
        from streams.lifecycle.retrainer_config import RetrainerConfig

        self.config = RetrainerConfig(
            feature_log=self.feature_log, repo_dir=self.args.repo,
            gate_days=self.args.gate_days,
            trigger=TriggerPolicy(schedule_days=self.args.schedule_days or None))
        self.metrics = RetrainerMetrics(
            drift_hold_seconds=self.config.thresholds.cooldown_seconds)
        start_http_server(self.settings.retrainer_metrics_port, addr=self.settings.metrics_addr,
                          registry=self.metrics.registry)

    def start_guard(self) -> None:
        """The serving guard (:mod:`streams.lifecycle.serving_guard`) on a thread of its own, over
        every Triton endpoint."""
        from streams.clients.triton_fleet import endpoint_label, triton_urls
        from streams.lifecycle.model_events import ModelEvents
        from streams.lifecycle.serving_guard import GuardMetrics, triton_guard

        urls = triton_urls(self.endpoints.triton)
        self.guard = triton_guard(
            redis_url=self.endpoints.redis, triton_urls=urls,
            registry_dir=self.settings.model_registry_dir, repo_dir=self.args.repo,
            events=ModelEvents(self.endpoints.kafka, self.settings, self.metrics),
            metrics=GuardMetrics(self.metrics.registry))
        self.guard_thread = self.guard.start(self.stop)
        print(f"serve: serving guard watching {', '.join(map(endpoint_label, urls))}",
              flush=True)

    def start_retrainer(self) -> None:
        from streams.lifecycle.retrainer import connect

        retrainer = self.retrainer = connect(
            self.config, self.settings, kafka=self.endpoints.kafka,
            redis_url=self.endpoints.redis, triton_url=self.endpoints.triton,
            metrics=self.metrics)
        retrainer.start()
        self.thread = threading.Thread(target=retrainer.run, args=(self.stop,),
                                       name="retrainer", daemon=True)
        self.thread.start()
        print(f"serve: retrainer watching {self.feature_log} (metrics 127.0.0.1:"
              f"{self.settings.retrainer_metrics_port})", flush=True)

    def supervise(self) -> None:
        """Restart a worker that died (its group continues from its committed state)."""
        for worker in self.workers:
            if not worker.alive() and not self.stop.is_set():
                self.restarts += 1
                print(f"serve: the {worker.role} worker exited; restarting it (see "
                      f"{worker.log_path})", flush=True)
                worker.start(self.endpoints.kafka)
                assert worker.proc is not None
                print(f"serve: the {worker.role} worker is up again (pid {worker.proc.pid})",
                      flush=True)

    def status_line(self) -> str:
        from streams.clients.router import ModelRouter

        samples: dict[str, float] = {}
        for worker in self.workers:
            samples.update({f"{worker.role}:{k}": v for k, v in worker.metrics().items()})
        now = Status(
            scored=_sum(samples, "score:factory_events_scored_total"),
            labels=_sum(samples, "labels:factory_labels_in_total"),
            dead=_sum(samples, "score:factory_events_dead_lettered_total"),
            triton_errors=_sum(samples, "score:factory_triton_errors_total"),
            lag=_sum(samples, "score:factory_consumer_lag")
            + _sum(samples, "labels:factory_consumer_lag"),
            at=time.monotonic())
        seconds = max(now.at - self.last.at, 1e-9)
        rate = max(now.scored - self.last.scored, 0) / seconds
        label_rate = max(now.labels - self.last.labels, 0) / seconds
        self.last = now
        router = ModelRouter(self.endpoints.redis)
        try:
            route = router.route()
        finally:
            router.close()
        serving = ("none" if route is None else
                   f"v{route.serving}" + (f" (shadow v{route.shadow})" if route.shadow else ""))
        events: list[dict[str, Any]] = []
        for source in (self.retrainer, self.guard):
            if source is not None and source.events is not None:
                events += [e for e in source.events.sent if e["event"] != "drift_check"]
        events.sort(key=lambda e: e.get("at", 0.0))
        recent = ", ".join(e["event"] + (f" v{e['version']}" if "version" in e else "")
                           for e in events[-3:])
        return (f"[{time.strftime('%H:%M:%S')}] scored {now.scored:,.0f} ({rate:,.0f}/s), "
                f"labels {now.labels:,.0f} ({label_rate:,.0f}/s), lag {now.lag:,.0f}, "
                f"dead letters {now.dead:,.0f}, Triton errors {now.triton_errors:,.0f}; "
                f"serving {serving}; model events: {recent or 'none yet'}")

    def run(self) -> None:
        next_status = time.monotonic() + self.args.status_every
        while not self.stop.wait(0.5):
            self.supervise()
            if time.monotonic() >= next_status:
                next_status += self.args.status_every
                try:
                    print(self.status_line(), flush=True)
                except Exception as exc:  # noqa: BLE001 - a status line, not a failure
                    print(f"serve: no status ({type(exc).__name__}: {exc})", flush=True)

    def close(self) -> None:
        """Stop the retrainer, then the workers (each commits its state before exiting)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=120)
        if self.guard_thread is not None:
            self.guard_thread.join(timeout=30)
        if self.retrainer is not None:
            self.retrainer.close()
        for worker in reversed(self.workers):
            worker.stop(timeout_s=60.0)
        print("serve: stopped; the services keep running ('factory down' stops them)",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    from infra.local.base import PrerequisiteError, ServiceError

    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    settings = Settings.from_env()
    service = Service(args, settings)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.stop.set())
    try:
        service.start()
        print("serve: running; Ctrl-C or SIGTERM stops it", flush=True)
        service.run()
    except (PrerequisiteError, ServiceError, RuntimeError) as exc:
        print(f"factory serve: {exc}", file=sys.stderr)
        return 2
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
