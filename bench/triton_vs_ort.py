"""Benchmark of Triton against in-process ONNX Runtime: rows a second at equal batch sizes.

    python -m bench.triton_vs_ort [--batches 1,64,1024,4096] [--seconds S] [--concurrency N]
                                  [--model recipe|mlp] [--ort-threads N] [--quick]
                                  [--triton-url HOST:PORT [--version N] [--repo PATH]]

The same ONNX graph and the same float32 batch go through three paths, for each batch
size:

* ``onnxruntime``: an ``InferenceSession`` in this process, CPU provider (and a second
  session with CUDA when this onnxruntime has it and a GPU is present), onnxruntime's
  default threads unless ``--ort-threads``, as the python backend opens it;
* ``triton sync``: ``tritonclient.grpc`` blocking ``infer``, one request at a time, the
  tensor serialised on every call as the worker does;
* ``triton async xN``: ``tritonclient.grpc.aio`` with ``--concurrency`` requests in
  flight, so that Triton's dynamic batcher can merge them.

Each point runs for ``--seconds`` after a warm-up of ``--warmup`` seconds; rows a second,
p50 and p99 of a call, this process's CPU seconds and (when the benchmark started Triton)
the server's CPU seconds are kept. Before timing, Triton's scores are checked against
onnxruntime's for the batch. Writes ``bench/results/triton_vs_ort.json`` and
``bench/results/triton_vs_ort.png`` (rows a second against batch size) and prints a table.

Without ``--triton-url`` (or ``TRITON_URL``) an untrained scorer with the input width of
``triton_repo/fraud_detector/config.pbtxt`` is published as version 1 into a temporary
copy of the model repository (``--model recipe``: the shape of the model the factory
serves, :mod:`models.recipe`; ``--model mlp``: the small :class:`models.mlp.FraudMLP`;
encodings fitted on synthetic rows, as scores need not be good to be timed), and a
Triton of the local stack is started on free ports with its state in a temporary folder,
then stopped at the end. With ``--triton-url`` the version given (default: the highest
ready one) is timed, and onnxruntime runs that version's ``model.onnx`` from ``--repo``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.common import machine_info, utc_date, write_report
from bench.triton_vs_ort_target import external_target, start_triton
from bench.triton_vs_ort_timing import gpu_present, measure
from models.triton_config import MODEL_NAME, read_model_config
from streams.settings import REPO_ROOT, Settings

RESULTS = REPO_ROOT / "bench" / "results" / "triton_vs_ort.json"


def machine() -> dict[str, object]:
    """The host, whether it has a GPU, and the inference libraries' versions."""
    from importlib.metadata import version

    return machine_info(
        gpu_present=gpu_present(),
        onnxruntime=ort.__version__,
        onnxruntime_providers_available=ort.get_available_providers(),
        tritonclient=version("tritonclient"),
        numpy=np.__version__,
    )


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    methods = dict.fromkeys(r["method"] for r in report["runs"])
    for method in methods:
        points = sorted((r["batch"], r["rows_per_s"]) for r in report["runs"]
                        if r["method"] == method)
        axes.plot(*zip(*points, strict=True), marker="o", label=method)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel("batch size (rows a call)")
    axes.set_ylabel("rows / s")
    info = report["machine"]
    axes.set_title(f"Triton (python backend, ONNX Runtime) vs in-process ONNX Runtime\n"
                   f"model {report['model']['kind']}, {info['cpus']} CPUs, "
                   f"GPU {'yes' if info['gpu_present'] else 'no'}",
                   fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def print_table(report: dict[str, Any], output: Path) -> None:
    base = {r["batch"]: r["rows_per_s"] for r in report["runs"]
            if r["method"] == "onnxruntime CPU"}
    print("| batch | method | rows/s | vs onnxruntime CPU | calls | p50 ms | p99 ms | "
          "client CPU s | server CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in report["runs"]:
        server = "-" if r["server_cpu_s"] is None else f"{r['server_cpu_s']:.2f}"
        print(f"| {r['batch']:,} | {r['method']} | {r['rows_per_s']:,.0f} | "
              f"{r['rows_per_s'] / base[r['batch']]:.2f}x | {r['calls']:,} | "
              f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['client_cpu_s']:.2f} | {server} |")
    info, s = report["machine"], report["settings"]
    providers = "; ".join(f"{k}: {v if isinstance(v, str) else ', '.join(v)}"
                          for k, v in report["providers"].items())
    model = report["model"]
    parameters = f"{model['parameters']:,} parameters, " if "parameters" in model else ""
    print(f"\nmodel: {model['kind']}, {parameters}"
          f"{model['onnx_bytes']:,} ONNX bytes, {s['n_features']} features; "
          f"{s['seconds']} s a point after {s['warmup_s']} s of warm-up; providers: "
          f"{providers}; Triton {report['triton_server_version']}, onnxruntime "
          f"{info['onnxruntime']}; {info['cpu']} ({info['cpus']} CPUs, load "
          f"{info['load_average_1m']}); results in {output} and {output.with_suffix('.png')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.triton_vs_ort", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,64,1024,4096",
                        help="comma-separated batch sizes (rows a call)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds a point")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds a point")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="requests in flight for the async Triton path")
    parser.add_argument("--model", choices=("recipe", "mlp"), default="recipe",
                        help="the untrained scorer to publish: the factory's recipe shape "
                             "(default) or the small FraudMLP")
    parser.add_argument("--ort-threads", type=int, default=0,
                        help="intra-op threads of the in-process sessions (default 0: "
                             "onnxruntime's choice, as in the python backend)")
    parser.add_argument("--triton-url", help="use this Triton (gRPC host:port); default: "
                        "TRITON_URL, else start one")
    parser.add_argument("--version", type=int, default=None,
                        help="with --triton-url: the version to time (default: highest ready)")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT / "triton_repo",
                        help="with --triton-url: the repository that holds its model.onnx")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run: batches 1 and 1024, 0.5 s a point")
    parser.add_argument("--queue-delay-us", type=int, default=None,
                        help="the started Triton's dynamic batcher delay (default: the "
                             "repository's config.pbtxt); not with --triton-url")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.seconds, args.warmup = "1,1024", 0.5, 0.2
    batches = [int(b) for b in args.batches.split(",")]
    config = read_model_config(args.repo / MODEL_NAME / "config.pbtxt")
    if max(batches) > config.max_batch_size:
        parser.error(f"batch {max(batches)} exceeds max_batch_size {config.max_batch_size} "
                     f"of {config.path}")

    url = args.triton_url or Settings.from_env().triton_url
    stack = None
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as work:
        try:
            if url is None:
                stack, target = start_triton(Path(work), config, args.model,
                                             args.queue_delay_us)
            else:
                target = external_target(url, args.version, args.repo)
            onnx_bytes = target.onnx.stat().st_size
            measured = measure(target, batches, args)
        finally:
            if stack is not None:
                stack.down(["triton"], echo=False)

    report: dict[str, Any] = {
        "benchmark": "Triton (python backend, ONNX Runtime) against in-process ONNX Runtime",
        "date": utc_date(),
        "quick": args.quick,
        "triton": "started by the benchmark" if stack is not None else target.url,
        "triton_server_version": measured["server_version"],
        "settings": {"batches": batches, "seconds": args.seconds, "warmup_s": args.warmup,
                     "concurrency": args.concurrency, "model_version": target.version,
                     "dynamic_batching_max_queue_delay_us": (
                         args.queue_delay_us if args.queue_delay_us is not None
                         else "as in the repository's config.pbtxt"),
                     "n_features": config.n_features, "max_batch_size": config.max_batch_size,
                     "onnxruntime_intra_op_threads": args.ort_threads or "default",
                     "triton_onnxruntime_intra_op_threads": "default"},
        "model": {**target.model, "onnx_bytes": onnx_bytes},
        "providers": measured["providers"],
        "max_abs_difference": measured["max_abs_difference"],
        "machine": machine(),
        "runs": measured["runs"],
    }
    write_report(args.output, report)
    plot(report, args.output.with_suffix(".png"))
    print_table(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
