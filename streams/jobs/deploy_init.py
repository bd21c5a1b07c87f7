"""``factory init``: prepare a deployment whose services run already.

A compose project or a Kubernetes cluster runs Kafka, Redis and Triton on its own; this
command, run once before the workers (a compose service, a Kubernetes Job), does what
``factory up`` does for the local stack, against those services:

1. the factory's topics, with explicit partition counts (``--no-topics`` where an
   operator owns them, e.g. Strimzi ``KafkaTopic`` resources);
2. Feast's repository applied on the online store;
3. the model configuration of the model repository for the backend Triton runs
   (``--triton-config onnxruntime-gpu`` for NVIDIA's image on a GPU, ``onnxruntime-cpu``,
   or ``python`` for the local python backend): written from ``infra/triton/`` into
   ``<repo>/fraud_detector/config.pbtxt``, which is also what the factory's load requests
   carry;
4. a first model when the registry has no champion: trained on simulated history and made
   the champion (``--first-model none`` leaves that to ``factory bootstrap``); the
   retrainer's serving guard then loads it on every Triton and routes the workers to it.

Every step leaves what is already there as it is, so a restarted init changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.serving_configs import VARIANTS, variant_path
from models.triton_config import DEFAULT_CONFIG_PATH, MODEL_NAME
from streams.settings import Settings

CONFIGS = ("python", *VARIANTS)
"""Backends a model repository can be prepared for: the source configuration (the local
python backend) and the committed ONNX Runtime variants."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factory init", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--triton-config", choices=CONFIGS, default="python",
                   help="the backend Triton serves the model with (default: python)")
    p.add_argument("--repo", type=Path, default=Settings.from_env().triton_repo,
                   help="the model repository Triton mounts (FACTORY_TRITON_REPO)")
    p.add_argument("--no-topics", action="store_true",
                   help="leave the topics to whoever manages them (a Strimzi KafkaTopic)")
    p.add_argument("--first-model", choices=("simulator", "none"), default="simulator",
                   help="train a first champion on simulated history when there is none")
    p.add_argument("--customers", type=int, default=300)
    p.add_argument("--terminals", type=int, default=600)
    p.add_argument("--days", type=int, default=60, help="days of simulated history")
    p.add_argument("--seed", type=int, default=0)
    return p


def config_text(backend: str) -> str:
    """The ``config.pbtxt`` of ``backend``: the source, or a committed variant."""
    path = DEFAULT_CONFIG_PATH if backend == "python" else variant_path(backend)
    return path.read_text()


def write_model_config(repo: Path, backend: str) -> bool:
    """``<repo>/fraud_detector/config.pbtxt`` made the one of ``backend``; True when it
    was written, False when it was already that one."""
    target = repo / MODEL_NAME / "config.pbtxt"
    text = config_text(backend)
    if target.exists() and target.read_text() == text:
        return False
    if target.resolve() == DEFAULT_CONFIG_PATH.resolve():
        raise ValueError(f"{target} is the model's source configuration: prepare another "
                         "model repository (--repo, FACTORY_TRITON_REPO) for "
                         f"--triton-config {backend}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name("config.pbtxt.tmp")
    staging.write_text(text)
    staging.replace(target)
    return True


def first_model(args: argparse.Namespace, settings: Settings) -> tuple[int, bool]:
    """The registry's champion, trained on simulated history when there is none; the
    version and whether it was trained now."""
    from models.registry import Registry

    registry = Registry(settings.model_registry_dir, repo_dir=args.repo)
    champion = registry.champion()
    if champion is not None:
        return champion, False
    import torch

    from models.trainer import frame_from_simulator, train_version

    torch.set_num_threads(1)
    print(f"init: no champion; training a first model on {args.days} simulated days of "
          f"{args.customers:,} cards and {args.terminals:,} terminals", flush=True)
    frame = frame_from_simulator(args.customers, args.terminals, args.days, args.seed)
    entry = train_version(frame, registry=registry, repo_dir=args.repo, trigger="initial",
                          seed=args.seed, device="cpu")
    registry.set_champion(entry.version, "first model of the deployment (factory init)")
    return entry.version, True


def main(argv: list[str] | None = None) -> int:
    from streams.clients.endpoints import service_endpoints
    from streams.clients.feast_client import apply_repo
    from streams.topics import ensure_topics, topic_partitions

    args = parser().parse_args(argv)
    settings = Settings.from_env()
    endpoints = service_endpoints(settings, "factory init")
    if args.no_topics:
        print("init: topics left to their manager", flush=True)
    else:
        ensure_topics(settings, endpoints.kafka)
        wanted = topic_partitions(settings.partitions)
        print("init: topics " + ", ".join(f"{name} ({count})" for name, count in wanted.items()),
              flush=True)
    apply_repo(endpoints.redis)
    print("init: feature repository applied", flush=True)
    try:
        written = write_model_config(args.repo, args.triton_config)
    except ValueError as exc:
        print(f"factory init: {exc}", file=sys.stderr)
        return 2
    print(f"init: {args.repo / MODEL_NAME / 'config.pbtxt'} is the {args.triton_config} "
          f"configuration{'' if written else ' already'}", flush=True)
    if args.first_model == "none":
        print("init: no first model asked for", flush=True)
        return 0
    version, trained = first_model(args, settings)
    print(f"init: version {version} is the champion"
          f"{' (trained now)' if trained else ''}; the serving guard loads and routes it",
          flush=True)
    return 0
