"""Run one stream worker: ``python -m streams.dataplane.worker`` (or ``factory worker``).

The worker reads its service endpoints from the settings, falling back to the local
stack's ``endpoints.json``, serves Prometheus metrics on 127.0.0.1, and runs the Faust
app until it is stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import start_http_server

from streams.clients.endpoints import service_endpoints
from streams.clients.kafka_access import exit_unless_allowed
from streams.dataplane.app import create_app, kafka_needs
from streams.dataplane.config import WorkerConfig
from streams.dataplane.metrics import WorkerMetrics
from streams.dataplane.scoring import DecisionPolicy, ReviewBudget
from streams.settings import REPO_ROOT, Settings


def worker_config(settings: Settings, **overrides: object) -> WorkerConfig:
    """Endpoints from the settings, or from the local stack started by ``factory up``."""
    endpoints = service_endpoints(settings, "factory worker")
    return WorkerConfig(
        kafka=endpoints.kafka, redis_url=endpoints.redis, triton_url=endpoints.triton,
        settings=settings,
        **overrides,  # type: ignore[arg-type]
    )


DEFAULT_APP_ID = "fraud-factory"


def role_defaults(role: str, settings: Settings) -> tuple[str, int]:
    """The consumer group and metrics port of a worker of ``role`` when none is given.

    A scoring and a labels worker started side by side with no options do not collide:
    the labels worker takes ``fraud-factory-labels`` and the metrics port after the
    scoring worker's, and the scoring worker follows the watermark of that group.
    """
    if role == "labels":
        return f"{DEFAULT_APP_ID}-labels", settings.worker_metrics_port + 1
    return DEFAULT_APP_ID, settings.worker_metrics_port


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="factory worker", description=__doc__)
    parser.add_argument("--batch-max", type=int, default=None,
                        help="events a micro-batch at most (default 4096 live, 8192 strict)")
    parser.add_argument("--batch-wait", type=float, default=None,
                        help="seconds the oldest event of a micro-batch waits for more "
                             "(default 0.005 live: a few ms of the latency budget; 0.1 "
                             "strict: replays favour throughput)")
    parser.add_argument("--commit-interval", type=float, default=1.0,
                        help="seconds between checkpoints (changelog, one flush, feature "
                             "log, offsets)")
    parser.add_argument("--review-at", type=float, default=0.5)
    parser.add_argument("--block-at", type=float, default=0.9)
    parser.add_argument("--reviews-per-day", type=int, default=0,
                        help="review at most N transactions an event day, the riskiest "
                             "(threshold learnt from the day before); 0: review at "
                             "--review-at")
    parser.add_argument("--request-rows", type=int, default=1024,
                        help="rows a Triton request at most (batches are split)")
    parser.add_argument("--in-flight", type=int, default=4,
                        help="Triton requests in flight at once")
    parser.add_argument("--log-level", default="warn",
                        choices=("crit", "error", "warn", "info", "debug"))
    parser.add_argument("--app-id", default=None,
                        help="consumer group and state namespace of the worker (default "
                             "fraud-factory; fraud-factory-labels for --role labels)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="Prometheus metrics port on 127.0.0.1 (default "
                             "FACTORY_WORKER_METRICS_PORT, 8100; one more for --role "
                             "labels)")
    parser.add_argument("--role", choices=("score", "labels", "all"), default="all",
                        help="score transactions, apply labels, or both in one process")
    parser.add_argument("--mode", choices=("live", "strict"), default="live",
                        help="strict: score an event only once labels known by its time "
                             "are applied (replays, parity); live: score at once")
    parser.add_argument("--labels-group", default=None,
                        help="consumer group of the labels worker whose watermark to follow")
    parser.add_argument("--feature-log", default=None,
                        help="folder of the offline feature log (default: state dir)")
    parser.add_argument("--feast-path", choices=("fast", "sdk"), default="fast",
                        help="Feast online access: the fast Redis path or Feast's SDK")
    parser.add_argument("--offset-reset", choices=("earliest", "latest"), default="earliest",
                        help="where a new consumer group starts reading")
    parser.add_argument("--session-timeout", type=float, default=10.0,
                        help="seconds the group waits for a silent member before its "
                             "partitions move (a static member: before it must be back)")
    parser.add_argument("--group-instance-id",
                        help="static membership of the consumer group (default "
                             "FACTORY_GROUP_INSTANCE_ID, e.g. a StatefulSet pod's name): "
                             "restarted within --session-timeout under the same "
                             "id, the worker gets its partitions back with no rebalance; "
                             "unique within the group")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    app_id, metrics_port = role_defaults(args.role, settings)
    args.app_id = args.app_id or app_id
    args.metrics_port = args.metrics_port or metrics_port
    config = worker_config(
        settings,
        batch_max=args.batch_max or (8192 if args.mode == "strict" else 4096),
        batch_wait_s=args.batch_wait or (0.1 if args.mode == "strict" else 0.005),
        commit_interval_s=args.commit_interval,
        policy=(ReviewBudget(args.reviews_per_day, args.block_at, args.review_at)
                if args.reviews_per_day else DecisionPolicy(args.review_at, args.block_at)),
        request_rows=args.request_rows, in_flight=args.in_flight,
        app_id=args.app_id, offset_reset=args.offset_reset, role=args.role, mode=args.mode,
        labels_group=args.labels_group, feast_path=args.feast_path,
        feature_log_dir=Path(args.feature_log) if args.feature_log else None,
        group_instance_id=args.group_instance_id or settings.group_instance_id,
        session_timeout_s=args.session_timeout,
    )
    # A wrong password or a missing ACL: one line and exit 1, not a retry loop.
    exit_unless_allowed(settings.kafka, config.kafka, kafka_needs(config), "factory worker")
    # The workers read the feature service from Feast's registry file: a new container
    # has none until the repository is applied (idempotent on the online store).
    from streams.clients.feast_client import ensure_applied

    if ensure_applied(config.redis_url):
        print("factory worker: feature repository applied", flush=True)
    metrics = WorkerMetrics()
    start_http_server(args.metrics_port, addr=settings.metrics_addr, registry=metrics.registry)
    levels = {"crit": "CRITICAL", "warn": "WARNING"}
    logging.basicConfig(level=levels.get(args.log_level, args.log_level.upper()))
    app = create_app(config, metrics)
    sys.argv = [sys.argv[0], "worker", "--loglevel", args.log_level, "--without-web"]
    app.main()


if __name__ == "__main__":
    main()


class WorkerProcess:
    """A worker in a child process, for the main job and the integration tests."""

    def __init__(self, settings: Settings, app_id: str, *, env: dict[str, str] | None = None,
                 offset_reset: str = "latest", log_path: str | None = None,
                 extra_args: list[str] | None = None, metrics_port: int | None = None,
                 role: str = "all", mode: str = "live", labels_group: str | None = None,
                 feature_log: str | None = None) -> None:
        self.settings = settings
        self.role = role
        self.mode = mode
        self.labels_group = labels_group
        self.feature_log = feature_log
        self.metrics_port = metrics_port or settings.worker_metrics_port
        self.app_id = app_id
        self.env = env
        self.offset_reset = offset_reset
        self.log_path = log_path
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, bootstrap: str, timeout_s: float = 90.0) -> None:
        """Start the worker and wait until its consumer group owns every partition."""
        argv = [sys.executable, "-m", "streams.dataplane.worker", "--app-id", self.app_id,
                "--offset-reset", self.offset_reset, "--role", self.role, "--mode", self.mode,
                *(["--labels-group", self.labels_group] if self.labels_group else []),
                *(["--feature-log", self.feature_log] if self.feature_log else []),
                "--metrics-port", str(self.metrics_port), *self.extra_args]
        from streams.topics import LABELS, TRANSACTIONS

        topic = LABELS if self.role == "labels" else TRANSACTIONS
        if self.offset_reset == "latest":
            # "latest" for a new group means now, not whenever its consumer first fetches.
            from streams.clients.kafka_io import pin_new_group
            from streams.topics import ensure_topics

            ensure_topics(self.settings, bootstrap)
            inputs = {"score": [TRANSACTIONS], "labels": [LABELS]}.get(
                self.role, [TRANSACTIONS, LABELS])
            for name in inputs:
                pin_new_group(bootstrap, self.settings, self.app_id, name)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            argv, cwd=REPO_ROOT,
            env={**os.environ, **(self.env or {}),
                 "FACTORY_WORKER_METRICS_PORT": str(self.metrics_port)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if not self.alive():
                raise RuntimeError(f"worker exited with code {self.proc.returncode} during start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready within {timeout_s:.0f} s")
            time.sleep(0.25)
        wait_for_group(bootstrap, self.settings, self.app_id, self.proc,
                       max(5.0, deadline - time.monotonic()), topic=topic)

    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples (name with labels -> value); empty when down."""
        import urllib.request

        try:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def ready(self) -> bool:
        return self.metrics().get("factory_worker_ready", 0.0) == 1.0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, kill: bool = False, timeout_s: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def wait_for_group(bootstrap: str, settings: Settings, group: str,
                   proc: subprocess.Popen[bytes] | None, timeout_s: float,
                   topic: str = "transactions") -> None:
    """Block until consumer group ``group`` is stable and owns every partition of ``topic``."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**settings.kafka.client_config(bootstrap), "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited with code {proc.returncode} during start")
        try:
            description = admin.describe_consumer_groups([group])[group].result(timeout=5)
            owned = {
                tp.partition
                for member in description.members
                for tp in member.assignment.topic_partitions
                if tp.topic == topic
            }
            if str(description.state).endswith("STABLE") and len(owned) == settings.partitions:
                return
        except Exception:  # noqa: BLE001 - not there yet
            pass
        time.sleep(0.5)
    raise RuntimeError(f"worker group {group!r} did not take its partitions in {timeout_s:.0f} s")


def replay_workers(settings: Settings, app_id: str, run_dir: Path,
                   steps: bool = False) -> list[WorkerProcess]:
    """The labels worker and the strict-replay scoring worker of one run, logging into
    ``run_dir`` (worker logs and the feature log); not started. With ``steps`` (the
    event clock: the replay waits for each day), batches wait less and checkpoints come
    five times a second, so a day's scores and feature log are out sooner."""
    common: dict = {"env": {"FACTORY_STATE_DIR": str(settings.state_dir)},
                    "offset_reset": "latest"}
    return [
        WorkerProcess(settings, f"{app_id}-labels", role="labels",
                      extra_args=["--batch-wait", "0.05" if steps else "0.5",
                                  "--batch-max", "4096"],
                      log_path=str(run_dir / "labels-worker.log"),
                      metrics_port=settings.worker_metrics_port + 1, **common),
        WorkerProcess(settings, app_id, role="score", mode="strict",
                      labels_group=f"{app_id}-labels",
                      feature_log=str(run_dir / "feature_log"),
                      log_path=str(run_dir / "score-worker.log"),
                      extra_args=["--batch-wait", "0.02", "--commit-interval", "0.2"]
                      if steps else None,
                      metrics_port=settings.worker_metrics_port, **common),
    ]
