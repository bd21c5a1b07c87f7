"""``factory retrainer``: the retrainer as a foreground service, until SIGTERM or Ctrl-C.

Its options (the feature log, the labels' consumer group, the schedule, the gate and the
shadow), the Prometheus endpoint, and the serving guard that keeps the routed versions
loaded in Triton beside it (:mod:`streams.lifecycle.retrainer` does the work).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from streams.settings import Settings


def _retrainer_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="factory retrainer",
        description="Watch the feature log and labels for drift; retrain, gate and hot-swap "
                    "fraud_detector versions; roll back a promoted version that does worse.")
    parser.add_argument("--feature-log", type=Path, required=True,
                        help="the scoring workers' feature log folder")
    parser.add_argument("--labels-group", default="factory-retrainer",
                        help="consumer group name of the labels reader")
    parser.add_argument("--schedule-days", type=float, default=7.0,
                        help="retrain after this many days of event time (0: never)")
    parser.add_argument("--gate-days", type=int, default=7,
                        help="latest matured days kept out of training for the gate")
    parser.add_argument("--full-retrain", action="store_true",
                        help="train from scratch instead of from the champion's weights")
    parser.add_argument("--shadow-rows", type=int, default=2000)
    parser.add_argument("--shadow-timeout", type=float, default=120.0)
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="Prometheus port (default FACTORY_RETRAINER_METRICS_PORT, 8110)")
    parser.add_argument("--repo", type=Path, default=Settings.from_env().triton_repo,
                        help="the Triton model repository (default: FACTORY_TRITON_REPO, "
                             "else triton_repo/)")
    parser.add_argument("--poll", type=float, default=2.0, help="seconds between steps")
    parser.add_argument("--once", action="store_true", help="one step, then exit")
    parser.add_argument("--no-guard", action="store_true",
                        help="do not run the serving guard (which keeps the routed versions "
                             "loaded in Triton) beside the retrainer")
    parser.add_argument("--log-level", default="info",
                        choices=("error", "warning", "info", "debug"))
    return parser


def main(argv: list[str]) -> int:
    """``factory retrainer``: the retrainer in the foreground until SIGTERM or Ctrl-C."""
    import dataclasses
    import logging
    import signal
    import threading

    from prometheus_client import start_http_server

    from streams.clients.endpoints import service_endpoints
    from streams.clients.kafka_access import KafkaNeeds, exit_unless_allowed
    from streams.lifecycle.model_events import ModelEvents, RetrainerMetrics
    from streams.lifecycle.retrain_policy import TriggerPolicy
    from streams.lifecycle.retrainer import connect
    from streams.lifecycle.retrainer_config import RetrainerConfig
    from streams.lifecycle.swap import SwapConfig
    from streams.topics import LABELS, MODEL_EVENTS

    args = _retrainer_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    endpoints = service_endpoints(settings, "factory retrainer")
    exit_unless_allowed(settings.kafka, endpoints.kafka,
                        KafkaNeeds(read=(LABELS,), write=(MODEL_EVENTS,),
                                   groups=(args.labels_group,)), "factory retrainer")
    config = RetrainerConfig(
        feature_log=args.feature_log, repo_dir=args.repo, gate_days=args.gate_days,
        warm_start=not args.full_retrain, poll_s=args.poll,
        trigger=TriggerPolicy(schedule_days=args.schedule_days or None),
        swap=dataclasses.replace(SwapConfig(), shadow_rows=args.shadow_rows,
                                 shadow_timeout_s=args.shadow_timeout))
    metrics = RetrainerMetrics(drift_hold_seconds=config.thresholds.cooldown_seconds)
    start_http_server(args.metrics_port or settings.retrainer_metrics_port,
                      addr=settings.metrics_addr,
                      registry=metrics.registry)
    retrainer = connect(config, settings, kafka=endpoints.kafka, redis_url=endpoints.redis,
                        triton_url=endpoints.triton, labels_group=args.labels_group,
                        metrics=metrics)
    champion = retrainer.start()
    print(f"retrainer: champion {champion}, feature log {args.feature_log}", flush=True)
    if args.once:
        report = retrainer.step()
        print(f"retrainer: {report.rows} rows, {report.labels} labels, {report.matured} "
              f"matured, {report.decisions} drift decisions, detected {report.detected}, "
              f"trigger {report.trigger.kind if report.trigger else None}, outcome "
              f"{report.outcome.status if report.outcome else None}", flush=True)
        retrainer.close()
        return 0
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    guard = None
    if not args.no_guard:
        from streams.clients.triton_fleet import triton_urls
        from streams.lifecycle.serving_guard import GuardMetrics, triton_guard

        guard = triton_guard(redis_url=endpoints.redis, triton_urls=triton_urls(endpoints.triton),
                             registry_dir=settings.model_registry_dir, repo_dir=args.repo,
                             events=ModelEvents(endpoints.kafka, settings, metrics),
                             metrics=GuardMetrics(metrics.registry)).start(stop)
    retrainer.run(stop)
    retrainer.close()
    if guard is not None:
        guard.join(timeout=30)
    return 0
