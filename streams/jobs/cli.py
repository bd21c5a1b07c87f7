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
import sys

from infra.local.base import PrerequisiteError, ServiceError
from infra.local.manager import SERVICE_ORDER, Stack
from streams.jobs.run_cli import add_run_options, run_command
from streams.settings import Settings
from streams.topics import kafka_layout


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        from streams.dataplane.worker import main as worker_main

        worker_main(argv[1:])
        return 0
    if argv[:1] == ["replay"]:
        from streams.replay.cli import main as replay_main

        return replay_main(argv[1:])
    if argv[:1] == ["model"]:
        from streams.jobs.model_cli import main as model_main

        return model_main(argv[1:])
    if argv[:1] == ["retrainer"]:
        from streams.jobs.retrainer_cli import main as retrainer_main

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
    add_run_options(commands.add_parser(
        "run", help="the main job end to end (the closed loop)"))
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
        if args.command == "run":
            return run_command(args, parser)
        settings = Settings.from_env()
        stack = Stack(settings, kafka_layout(settings.partitions))
        if args.command == "up":
            endpoints = stack.up(args.services or None)
            if not args.services or "redis" in args.services:
                # The workers read the feature service from Feast's registry: a fresh
                # clone has none until the repository is applied.
                from streams.clients.feast_client import apply_repo

                apply_repo(endpoints.redis)
                print(f"{'feast':<11} feature_repo applied", flush=True)
            if "triton" in stack.services and (not args.services or "triton" in args.services):
                _load_routed_versions(settings, endpoints.redis, endpoints.triton)
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


if __name__ == "__main__":
    sys.exit(main())
