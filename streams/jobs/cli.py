"""The ``factory`` command.

    factory up [SERVICE...]      start local services (kafka, redis, triton, prometheus)
    factory down [SERVICE...]    stop them
    factory status               one line a service
    factory run [--days N]       the main job, end to end on simulated traffic
    factory worker [...]         run one stream worker in the foreground
    factory replay [...]         replay a dataset into transactions and labels
    factory model ...            train, list, show, promote and roll back model versions
    factory retrainer [...]      drift monitors, retraining, gate and hot swap, as a service
    factory serve [...]          services, both workers and the retrainer as one service
    factory bootstrap --parquet  first model and primed state from your own history
    factory init [...]           prepare a deployment on running services (compose, k8s)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from infra.local.base import PrerequisiteError, ServiceError
from infra.local.manager import SERVICE_ORDER, Stack
from streams.settings import Settings

if TYPE_CHECKING:
    from models.registry import Registry


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        from streams.dataplane.worker import main as worker_main

        worker_main(argv[1:])
        return 0
    if argv[:1] == ["replay"]:
        from streams.replay.producer import main as replay_main

        return replay_main(argv[1:])
    if argv[:1] == ["model"]:
        return model_main(argv[1:])
    if argv[:1] == ["retrainer"]:
        return retrainer_main(argv[1:])
    if argv[:1] == ["bootstrap"]:
        from streams.jobs.bootstrap import main as bootstrap_main

        return bootstrap_main(argv[1:])
    if argv[:1] == ["serve"]:
        from streams.jobs.serve import main as serve_main

        return serve_main(argv[1:])
    if argv[:1] == ["init"]:
        from streams.jobs.deploy_init import main as init_main

        return init_main(argv[1:])
    parser = argparse.ArgumentParser(prog="factory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down"):
        sub = commands.add_parser(name, help=f"{name} local services")
        sub.add_argument("services", nargs="*", choices=[[], *SERVICE_ORDER], default=[])
    commands.add_parser("status", help="state of each service")
    run = commands.add_parser("run", help="the main job end to end (the closed loop)")
    run.add_argument("--customers", type=int, default=None,
                     help="cards (default 1000; 500 with --no-loop)")
    run.add_argument("--terminals", type=int, default=None,
                     help="terminals (default 2000; 1000 with --no-loop)")
    run.add_argument("--days", type=int, default=None,
                     help="simulated days (default 84; 45 with --no-loop, at least 45)")
    run.add_argument("--drift", default="card_testing:start=42,days=42,intensity=10",
                     help="drift scenario KIND:start=D,days=N,intensity=X, or 'none'")
    run.add_argument("--seconds-per-day", type=float, default=4.0,
                     help="wall seconds an event day takes in the replay")
    run.add_argument("--parquet", default=None, metavar="PATH",
                     help="the loop on your own transactions (TRANSACTION_ID, TX_DATETIME, "
                          "CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD) instead of the "
                          "simulator; labels 7 days late")
    run.add_argument("--first-model-days", type=int, default=35,
                     help="days the first model learns from (the rest is the live stream)")
    run.add_argument("--compare-from-day", type=int, default=None,
                     help="day from which served and frozen scores are compared (default: "
                          "the drift's start, or the first model's end with --parquet)")
    run.add_argument("--no-loop", action="store_true",
                     help="no retrainer: stream, score and check parity with one model")
    run.add_argument("--clock", choices=("wall", "event"), default="wall",
                     help="wall: paced at --seconds-per-day, the retrainer acts in wall time; "
                          "event: a day at a time, each acted on before the next (the same "
                          "figures on any machine)")
    run.add_argument("--seeds", default=None, metavar="S,S,...",
                     help="one run a seed (a world each), then the figures' mean and spread, "
                          "e.g. --clock event --seeds 0,1,2")
    run.add_argument("--scenarios", default=None, metavar="NAME,...|all",
                     help="one run a scenario (and seed), then one table: card_testing, "
                          "spending_shift, label_delay, night_spree, control (no drift)")
    run.add_argument("--feedback", default="off", metavar="off|on|off,on",
                     help="investigators review the riskiest cards each day and their "
                          "labels come back that day (event clock); off,on with "
                          "--scenarios runs both")
    run.add_argument("--reviews-per-day", type=int, default=100,
                     help="cards the investigators review a day (with --feedback)")
    run.add_argument("--explore-share", type=float, default=0.1,
                     help="share of the reviews spent on cards the model is unsure about "
                          "or drawn at random (with --feedback)")
    run.add_argument("--follow-up-days", type=float, default=2.0,
                     help="while a drift persists, retrain every this many event days")
    run.add_argument("--keep-up", action="store_true", help="leave the services running")
    commands.add_parser("worker", help="run one stream worker (see factory worker --help)")
    commands.add_parser("replay", help="replay a dataset (see factory replay --help)")
    commands.add_parser("model", help="the model registry (see factory model --help)")
    commands.add_parser("retrainer", help="the retrainer (see factory retrainer --help)")
    commands.add_parser("bootstrap", help="start from your own history (see factory "
                                          "bootstrap --help)")
    commands.add_parser("serve", help="the whole factory as a long-running service "
                                      "(see factory serve --help)")
    commands.add_parser("init", help="prepare a deployment on running services (see "
                                     "factory init --help)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run" and args.no_loop and args.parquet:
            parser.error("--parquet runs the loop: drop --no-loop")
        if args.command == "run" and args.no_loop:
            from streams.jobs.job import JobSize
            from streams.jobs.job import run as run_job

            days = args.days or 45
            if days < 45:
                parser.error("--days must be at least 45")
            size = JobSize(args.customers or 500, args.terminals or 1000, days,
                           test_days=(days - 7, days))
            run_job(size, keep_up=args.keep_up, triton_repo=Settings.from_env().triton_repo)
            return 0
        if args.command == "run":
            from streams.jobs.loop import LoopSize, run_loop

            loop = LoopSize(customers=args.customers or 1000,
                            terminals=args.terminals or 2000, days=args.days or 84,
                            drift="none" if args.parquet else args.drift,
                            seconds_per_day=args.seconds_per_day, parquet=args.parquet,
                            first_model_end_day=args.first_model_days,
                            compare_from_day=args.compare_from_day, clock=args.clock,
                            explore_share=args.explore_share,
                            follow_up_days=args.follow_up_days)
            modes = [m.strip() for m in args.feedback.split(",") if m.strip()]
            if not modes or set(modes) - {"off", "on"}:
                parser.error("--feedback is off, on or off,on")
            if "on" in modes and args.clock != "event":
                parser.error("--feedback on needs --clock event")
            if len(modes) > 1 and not args.scenarios:
                parser.error("--feedback off,on needs --scenarios")
            if modes == ["on"]:
                loop = dataclasses.replace(loop, reviews_per_day=args.reviews_per_day)
            if args.scenarios:
                from streams.jobs.scenario_table import run_scenarios, scenario_names

                if args.parquet:
                    parser.error("--scenarios simulates its worlds: drop --parquet")
                try:
                    names = scenario_names(args.scenarios)
                except ValueError as exc:
                    parser.error(str(exc))
                seeds = [int(s) for s in (args.seeds or "0").split(",") if s.strip()]
                run_scenarios(loop, names, seeds, keep_up=args.keep_up,
                              triton_repo=Settings.from_env().triton_repo,
                              reviews=[args.reviews_per_day if m == "on" else 0
                                       for m in modes])
                return 0
            if args.seeds:
                from streams.jobs.loop import run_seeds

                seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
                run_seeds(loop, seeds, keep_up=args.keep_up,
                          triton_repo=Settings.from_env().triton_repo)
                return 0
            run_loop(loop, keep_up=args.keep_up, triton_repo=Settings.from_env().triton_repo)
            return 0
        stack = Stack(Settings.from_env())
        if args.command == "up":
            endpoints = stack.up(args.services or None)
            if not args.services or "redis" in args.services:
                # The workers read the feature service from Feast's registry: a fresh
                # clone has none until the repository is applied.
                from streams.clients.feast_client import apply_repo

                apply_repo(endpoints.redis)
                print(f"{'feast':<11} feature_repo applied", flush=True)
            if "triton" in stack.services and (not args.services or "triton" in args.services):
                _load_routed_versions(stack.settings, endpoints.redis, endpoints.triton)
        elif args.command == "down":
            stack.down(args.services or None)
        else:
            for name, state in stack.status().items():
                print(f"{name:<11} {state}")
    except (PrerequisiteError, ServiceError) as exc:
        print(f"factory: {exc}", file=sys.stderr)
        return 2
    return 0


def _load_routed_versions(settings: Settings, redis_url: str, triton_url: str) -> None:
    """A local Triton (each of them) starts with what the route serves (the registry's
    champion when Redis has no route) loaded: one pass of the serving guard. Nothing
    before a first champion exists; a failure is reported, and the guard of ``factory
    serve`` retries."""
    from models.registry import Registry
    from streams.clients.triton_fleet import triton_urls
    from streams.lifecycle.serving_guard import triton_guard

    if Registry(settings.model_registry_dir).champion() is None:
        return
    guard = triton_guard(redis_url=redis_url, triton_urls=triton_urls(triton_url),
                         registry_dir=settings.model_registry_dir,
                         repo_dir=settings.triton_repo)
    try:
        report = guard.check()
    except Exception as exc:  # noqa: BLE001 - the services are up; serving is retried
        print(f"{'triton':<11} routed versions not loaded: {exc}", flush=True)
        return
    finally:
        guard.router.close()
    if report.route is not None:
        shadow = f", shadow v{report.route.shadow}" if report.route.shadow else ""
        state = "loaded" if report.ready else f"NOT loaded ({report.failed})"
        print(f"{'triton':<11} serving v{report.route.serving}{shadow} {state}", flush=True)


def _model_parser() -> argparse.ArgumentParser:
    from models.registry import TRIGGERS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repo", type=Path, default=Settings.from_env().triton_repo,
                        help="the Triton model repository (default: FACTORY_TRITON_REPO, "
                             "else triton_repo/)")
    parser = argparse.ArgumentParser(
        prog="factory model", description="Train, list, show, promote and roll back versions.")
    actions = parser.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", parents=[common],
                               help="train, publish and register a new version")
    train.add_argument("--source", choices=("simulator", "feature-log"), default="simulator")
    train.add_argument("--feature-log", type=Path, help="feature log folder (--source feature-log)")
    train.add_argument("--labels", type=Path,
                       help="label records tx_id, is_fraud, known_at (parquet or CSV)")
    train.add_argument("--customers", type=int, default=300)
    train.add_argument("--terminals", type=int, default=600)
    train.add_argument("--days", type=int, default=60)
    train.add_argument("--end", help="end of the validation window, exclusive (a date; "
                                     "default: the day after the last labelled transaction)")
    train.add_argument("--valid-days", type=int, default=7)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--trigger", choices=TRIGGERS, default="manual")
    train.add_argument("--parent", type=int, help="the version it replaces (default: champion)")
    train.add_argument("--warm-start", action="store_true", help="start from the parent's weights")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (the net is small: one is fastest on a busy host)")
    train.add_argument("--promote", action="store_true", help="make it the champion at once")
    actions.add_parser("list", parents=[common], help="a table of every version")
    show = actions.add_parser("show", parents=[common], help="one version and its lineage")
    show.add_argument("version", type=int)
    promote = actions.add_parser(
        "promote", parents=[common],
        help="serve a version: the gate, the shadow and the swap, as the retrainer does")
    promote.add_argument("version", type=int)
    promote.add_argument("--reason", default="promoted by hand")
    promote.add_argument("--force", action="store_true",
                         help="skip the gate (recorded as such in the registry and on "
                              "model-events); the shadow and the swap still run")
    promote.add_argument("--registry-only", action="store_true",
                         help="only make it the registry's champion (no service is touched; "
                              "a retrainer or 'factory serve' routes to it when it starts)")
    rollback = actions.add_parser(
        "rollback", parents=[common],
        help="serve the previous champion again, in place of the current one")
    rollback.add_argument("--to", type=int, help="the version to serve (default: the "
                                                   "champion before the current one)")
    rollback.add_argument("--reason", default="rolled back by hand")
    for sub in (promote, rollback):
        sub.add_argument("--feature-log", type=Path, default=None,
                         help="the scoring workers' feature log (gate rows and shadow "
                              "scores; default: <state dir>/feature_log)")
        sub.add_argument("--gate-days", type=int, default=7,
                         help="latest matured days of the feature log the gate judges on")
        sub.add_argument("--shadow-rows", type=int, default=2000,
                         help="shadow-scored rows before the promotion")
        sub.add_argument("--shadow-timeout", type=float, default=120.0,
                         help="promote after this many seconds of shadow at most")
    return parser


def _train_model(args: argparse.Namespace, registry: Registry) -> int:
    import torch

    from models.trainer import frame_from_feature_log, frame_from_simulator, train_version

    torch.set_num_threads(args.threads)
    if args.source == "feature-log":
        if args.feature_log is None or args.labels is None:
            raise ValueError("--source feature-log needs --feature-log PATH and --labels PATH")
        frame = frame_from_feature_log(args.feature_log, args.labels)
    else:
        print(f"simulating {args.days} days of {args.customers:,} cards and "
              f"{args.terminals:,} terminals", flush=True)
        frame = frame_from_simulator(args.customers, args.terminals, args.days, args.seed)
    parent = args.parent if args.parent is not None else registry.champion()
    entry = train_version(frame, registry=registry, repo_dir=args.repo, parent=parent,
                          trigger=args.trigger, valid_days=args.valid_days, seed=args.seed,
                          device=args.device, end=args.end, warm_start=args.warm_start)
    m, window = entry.metrics, entry.metrics["window"]
    rows = entry.window.rows if entry.window else 0
    print(f"version {entry.version} (parent {entry.parent}): AUC ROC {m['auc_roc']:.3f}, "
          f"AP {m['average_precision']:.3f}, CP@100 {m['card_precision_at_k']:.3f} on "
          f"{window['start'][:10]}..{window['end'][:10]}; trained in {entry.train_seconds:.1f} s "
          f"on {rows:,} rows; {args.repo / 'fraud_detector' / str(entry.version)}")
    if args.promote:
        return _promote_trained(entry.version, args, registry)
    return 0


def _promote_trained(version: int, args: argparse.Namespace, registry: Registry) -> int:
    """``train --promote``: the champion at once, and serving when the services are up:
    loaded and routed when nothing serves yet, else through the gate, shadow and swap
    (the champion stays as it was when the gate refuses)."""
    from streams.dataplane.worker import service_endpoints
    from streams.lifecycle.model_ops import ModelOperator, Operation, PromotionRefused
    from streams.lifecycle.swap import SwapError

    settings = Settings.from_env()
    try:
        service_endpoints(settings)
    except SystemExit:
        registry.set_champion(version, "trained with --promote")
        print(f"version {version} is the champion; no services to serve it on ('factory "
              "up' or settings): it serves when a retrainer or 'factory serve' starts")
        return 0
    operator = ModelOperator(Operation(settings, args.repo, settings.state_dir / "feature_log"))
    try:
        if operator.router.route() is None:
            registry.set_champion(version, "trained with --promote")
            route = operator.swapper.ensure_serving(version)
            print(f"version {version} is the champion and serves (route generation "
                  f"{route.generation})")
        else:
            report = operator.promote(version, reason="trained with --promote")
            print(f"version {version} is the champion and serves"
                  + ("" if report is None else f" (was {report.old}: gate, shadow, swap)"))
    except (PromotionRefused, SwapError) as exc:
        print(f"factory model train: version {version} is registered but does not serve: "
              f"{exc}", file=sys.stderr)
        return 1
    finally:
        operator.close()
    return 0


def _list_models(registry: Registry) -> None:
    head = ("version", "status", "parent", "trigger", "window", "AP", "CP@100", "created")
    rows = [head]
    for entry in registry.list():
        window = (f"{entry.window.start[:10]}..{entry.window.end[:10]}"
                  if entry.window else "-")
        metric = entry.metrics.get
        rows.append((
            str(entry.version), entry.status, "-" if entry.parent is None else str(entry.parent),
            entry.trigger, window,
            f"{metric('average_precision'):.3f}" if "average_precision" in entry.metrics else "-",
            f"{metric('card_precision_at_k'):.3f}" if "card_precision_at_k" in entry.metrics
            else "-",
            entry.created_at,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              .rstrip())


def _serving_lines(settings: Settings) -> list[str]:
    """What each Triton serves now (its READY versions) and where the router sends the
    workers; says so when either cannot be asked."""
    from infra.local.manager import Endpoints
    from streams.clients.router import ModelRouter
    from streams.clients.triton_fleet import endpoint_label, triton_urls
    from streams.dataplane.scoring import MODEL_NAME

    path = settings.state_dir / "endpoints.json"
    local = Endpoints.load(path) if path.exists() else None
    triton = settings.triton_url or (local.triton if local else None)
    redis_url = settings.redis_url.get() if settings.redis_url else (
        local.redis if local else None)
    lines = []
    if triton is None:
        lines.append("Triton: no endpoint (run 'factory up' or set TRITON_URL)")
    for url in triton_urls(triton) if triton else []:
        import tritonclient.grpc as grpc

        try:
            client = grpc.InferenceServerClient(url)
            index = client.get_model_repository_index(as_json=True).get("models", [])
            client.close()
            ready = sorted(int(m["version"]) for m in index
                           if m.get("name") == MODEL_NAME and m.get("state") == "READY")
            lines.append(f"Triton {endpoint_label(url)}: {MODEL_NAME} versions READY: "
                         f"{', '.join(map(str, ready)) or 'none'}")
        except Exception as exc:  # noqa: BLE001 - a status line, not a failure
            lines.append(f"Triton {endpoint_label(url)}: not reachable "
                         f"({type(exc).__name__})")
    if redis_url is None:
        lines.append("route: no Redis endpoint (run 'factory up' or set REDIS_URL)")
    else:
        try:
            route = ModelRouter(redis_url, MODEL_NAME).route()
            lines.append("route: none (workers score the newest READY version)"
                         if route is None else
                         f"route: serving {route.serving}, shadow "
                         f"{route.shadow or 'none'} (generation {route.generation})")
        except Exception as exc:  # noqa: BLE001
            lines.append(f"route: Redis not reachable ({type(exc).__name__})")
    return lines


def model_main(argv: list[str]) -> int:
    """``factory model train|list|show|promote``; heavy modules load only for train."""
    import json

    from models.registry import Registry, published_dirs

    args = _model_parser().parse_args(argv)
    registry = Registry(Settings.from_env().model_registry_dir, repo_dir=args.repo)
    try:
        # Versions published outside the registry get an entry (unknown lineage).
        for version in registry.sync():
            print(f"recorded version {version} found in {args.repo} (unknown lineage)",
                  file=sys.stderr)
        if args.action == "train":
            return _train_model(args, registry)
        elif args.action == "list":
            _list_models(registry)
            for line in _serving_lines(Settings.from_env()):
                print(line)
            published = set(published_dirs(args.repo))
            for version in registry.versions():
                if version not in published:
                    print(f"version {version} has no directory in {args.repo}",
                          file=sys.stderr)
        elif args.action == "show":
            print(json.dumps(registry.get(args.version).to_dict(), indent=2))
            chain = [str(entry.version) for entry in registry.lineage(args.version)]
            print(f"lineage: {' <- '.join(chain)}")
        elif args.action == "promote" and args.registry_only:
            previous = registry.champion()
            registry.set_champion(args.version, args.reason)
            print(f"version {args.version} is the champion (was {previous}); no service "
                  "was touched")
        else:
            return _serve_version(args)
    except (KeyError, ValueError, OSError) as exc:
        print(f"factory model: {exc}", file=sys.stderr)
        return 2
    return 0


def _serve_version(args: argparse.Namespace) -> int:
    """``factory model promote N`` and ``factory model rollback`` on the services."""
    import dataclasses
    import logging

    from streams.lifecycle.model_ops import ModelOperator, Operation, PromotionRefused
    from streams.lifecycle.swap import SwapConfig, SwapError

    logging.basicConfig(level="INFO", format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("streams.lifecycle.model_events",):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = Settings.from_env()
    op = Operation(settings, args.repo,
                   args.feature_log or settings.state_dir / "feature_log",
                   gate_days=args.gate_days,
                   swap=dataclasses.replace(SwapConfig(), shadow_rows=args.shadow_rows,
                                            shadow_timeout_s=args.shadow_timeout))
    operator = ModelOperator(op)
    try:
        if args.action == "promote":
            report = operator.promote(args.version, force=args.force, reason=args.reason)
            if report is None:
                print(f"version {args.version} serves already")
                return 0
        else:
            report = operator.rollback(args.to, reason=args.reason)
    except (PromotionRefused, SwapError) as exc:
        print(f"factory model {args.action}: {exc}", file=sys.stderr)
        return 1
    finally:
        operator.close()
    print(f"version {report.new} serves (was {report.old}; route generation "
          f"{report.generation}); load {report.load_seconds:.1f} s, shadow "
          f"{report.shadow_seconds:.1f} s ({report.shadow.get('rows', 0)} rows), drain "
          f"{report.drain_seconds:.1f} s; version {report.old} "
          f"{'unloaded' if report.unloaded else 'still loaded'}")
    return 0


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


def retrainer_main(argv: list[str]) -> int:
    """``factory retrainer``: the retrainer in the foreground until SIGTERM or Ctrl-C."""
    import dataclasses
    import logging
    import signal
    import threading

    from prometheus_client import start_http_server

    from streams.clients.kafka_access import KafkaNeeds, exit_unless_allowed
    from streams.dataplane.worker import service_endpoints
    from streams.lifecycle.model_events import ModelEvents, RetrainerMetrics
    from streams.lifecycle.retrain_policy import TriggerPolicy
    from streams.lifecycle.retrainer import RetrainerConfig, connect
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


if __name__ == "__main__":
    sys.exit(main())
