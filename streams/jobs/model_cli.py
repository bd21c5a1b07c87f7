"""``factory model``: train, list, show, promote and roll back fraud_detector versions.

``train`` trains, publishes and registers a version (``--promote`` makes it the champion
and serves it when the services are up); ``list`` and ``show`` read the registry and say
what Triton and the route serve; ``promote`` and ``rollback`` serve a version through the
gate, the shadow and the swap, as the retrainer does (:mod:`streams.lifecycle.model_ops`).
Heavy modules load only for the action that needs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from streams.settings import Settings

if TYPE_CHECKING:
    from models.registry import Registry


def _model_parser() -> argparse.ArgumentParser:
    from models.model_version import TRIGGERS

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

    from models.feature_log import frame_from_feature_log
    from models.trainer import frame_from_simulator, train_version

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
    from streams.clients.endpoints import service_endpoints
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


def main(argv: list[str]) -> int:
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
