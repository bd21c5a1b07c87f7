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
import asyncio
import ctypes
import dataclasses
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from bench.common import (
    group_cpu_seconds,
    isolated_settings,
    machine_info,
    model_repository,
    utc_date,
    write_report,
)
from infra.local.manager import Stack
from infra.settings import KafkaSettings
from models.triton_config import MODEL_NAME, ModelConfig, read_model_config
from streams.settings import REPO_ROOT, Settings
from streams.topics import kafka_layout

RESULTS = REPO_ROOT / "bench" / "results" / "triton_vs_ort.json"
ModelKind = Literal["recipe", "mlp"]


@dataclasses.dataclass
class Target:
    """The Triton to time and the model version both paths run."""

    url: str
    version: int
    onnx: Path
    config: ModelConfig
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    server_pgid: int | None = None
    server_log: Path | None = None


def gpu_present() -> bool:
    """Whether the CUDA driver sees a device (as the python backend decides)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return False
    return count.value > 0


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


def build_model(kind: ModelKind, n_features: int) -> tuple[Any, dict[str, Any]]:
    """An untrained scorer of ``kind`` and the contract's width, and its description.

    ``recipe`` has the shape of the model the factory serves (:mod:`models.recipe`: a bag
    of binned MLPs, encodings fitted on synthetic rows); ``mlp`` is the small
    :class:`models.mlp.FraudMLP`. Untrained weights cost the same to run as trained ones.
    """
    from models.train import synthetic_dataset

    X, _ = synthetic_dataset(4000, seed=0, n_features=n_features)
    if kind == "mlp":
        from models.mlp import FraudMLP

        model = FraudMLP(n_features, seed=0).fit_scaler(X)
        shape = model.architecture()
    else:
        from models.binned_mlp import BinnedMLP, FraudEnsemble
        from models.recipe import DEFAULT_RECIPE as R

        model = FraudEnsemble([BinnedMLP(n_features, R.hidden, R.dropout, R.n_bins, seed=i)
                               .fit_encoding(X) for i in range(R.n_members)])
        shape = {"n_features": n_features, "members": R.n_members, "n_bins": R.n_bins,
                 "hidden": list(R.hidden)}
    parameters = sum(p.numel() for p in model.parameters())
    return model.eval(), {"kind": kind, **shape, "parameters": parameters}


def publish_model(repo: Path, n_features: int, kind: ModelKind) -> tuple[Path, dict[str, Any]]:
    """An untrained scorer as version 1 of a repository copy; its directory and description."""
    from models.export import publish_version

    model_repository(repo)
    model, description = build_model(kind, n_features)
    return publish_version(model, repo, 1), description


def timed(call: Callable[[], object], seconds: float, warmup: float) -> dict[str, Any]:
    """Call repeatedly for ``warmup`` seconds, then for ``seconds``; latencies and CPU."""
    until = time.perf_counter() + warmup
    while time.perf_counter() < until:
        call()
    latencies: list[float] = []
    cpu0 = time.process_time()
    began = time.perf_counter()
    until = began + seconds
    while True:
        started = time.perf_counter()
        call()
        ended = time.perf_counter()
        latencies.append(ended - started)
        if ended >= until and len(latencies) >= 3:
            break
    return {"latencies": latencies, "elapsed": ended - began,
            "client_cpu": time.process_time() - cpu0}


def timed_async(url: str, target: Target, batch: np.ndarray, seconds: float, warmup: float,
                concurrency: int) -> dict[str, Any]:
    """Like :func:`timed`, with ``concurrency`` gRPC requests in flight at all times."""
    import tritonclient.grpc.aio as aio

    spec_in, spec_out = target.config.input, target.config.output

    async def run() -> dict[str, Any]:
        client = aio.InferenceServerClient(url=url)

        async def worker(until: float, latencies: list[float]) -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                tensor = aio.InferInput(spec_in.name, list(batch.shape), spec_in.triton_dtype)
                tensor.set_data_from_numpy(batch)
                result = await client.infer(MODEL_NAME, [tensor],
                                            model_version=str(target.version),
                                            outputs=[aio.InferRequestedOutput(spec_out.name)])
                result.as_numpy(spec_out.name)
                latencies.append(time.perf_counter() - started)

        try:
            warm: list[float] = []
            until = time.perf_counter() + warmup
            await asyncio.gather(*(worker(until, warm) for _ in range(concurrency)))
            latencies: list[float] = []
            cpu0, began = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker(began + seconds, latencies)
                                   for _ in range(concurrency)))
            return {"latencies": latencies, "elapsed": time.perf_counter() - began,
                    "client_cpu": time.process_time() - cpu0}
        finally:
            await client.close()

    return asyncio.run(run())


def sessions(onnx: Path, threads: int) -> dict[str, ort.InferenceSession]:
    """In-process sessions: CPU, and CUDA when this onnxruntime has it and a GPU exists."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    found = {"onnxruntime CPU": ort.InferenceSession(str(onnx), options,
                                                     providers=["CPUExecutionProvider"])}
    if "CUDAExecutionProvider" in ort.get_available_providers() and gpu_present():
        found["onnxruntime CUDA"] = ort.InferenceSession(
            str(onnx), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    return found


def measure(target: Target, batches: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """Every path at every batch size; the report's runs and providers."""
    import tritonclient.grpc as grpc

    from models.train import synthetic_dataset

    spec_in, spec_out = target.config.input, target.config.output
    rows, _ = synthetic_dataset(max(batches), seed=1, n_features=target.config.n_features)
    local = sessions(target.onnx, args.ort_threads)
    client = grpc.InferenceServerClient(url=target.url)

    def triton_call(batch: np.ndarray) -> np.ndarray:
        tensor = grpc.InferInput(spec_in.name, list(batch.shape), spec_in.triton_dtype)
        tensor.set_data_from_numpy(batch)
        result = client.infer(MODEL_NAME, [tensor], model_version=str(target.version),
                              outputs=[grpc.InferRequestedOutput(spec_out.name)])
        return result.as_numpy(spec_out.name)

    runs: list[dict[str, Any]] = []
    checks: dict[int, float] = {}
    for size in batches:
        batch = np.ascontiguousarray(rows[:size], dtype=spec_in.numpy_dtype)
        feed = {spec_in.name: batch}
        reference = local["onnxruntime CPU"].run([spec_out.name], feed)[0]
        checks[size] = float(np.max(np.abs(triton_call(batch) - reference)))
        if checks[size] > 1e-4:
            raise RuntimeError(f"Triton and onnxruntime disagree at batch {size}: "
                               f"max |difference| {checks[size]:.3g}")
        for name, run in points(local, triton_call, target, batch, args).items():
            server0 = group_cpu_seconds(target.server_pgid)
            point = run()
            server1 = group_cpu_seconds(target.server_pgid)
            runs.append(summarise(name, size, point, server0, server1))
            print(f"  batch {size:>5} {name:<22} {runs[-1]['rows_per_s']:>12,.0f} rows/s "
                  f"p50 {runs[-1]['p50_ms']:.3f} ms", file=sys.stderr, flush=True)
    version = str(client.get_server_metadata().version)
    client.close()
    providers = {name: session.get_providers() for name, session in local.items()}
    providers["triton"] = triton_providers(target.server_log)
    return {"runs": runs, "providers": providers, "max_abs_difference": checks,
            "server_version": version}


def points(local: dict[str, ort.InferenceSession], triton_call: Callable[[np.ndarray], object],
           target: Target, batch: np.ndarray,
           args: argparse.Namespace) -> dict[str, Callable[[], dict[str, Any]]]:
    """One timed measurement a path, for ``batch``."""
    feed, output = {target.config.input.name: batch}, [target.config.output.name]
    found: dict[str, Callable[[], dict[str, Any]]] = {
        name: (lambda s=session: timed(lambda: s.run(output, feed), args.seconds,
                                       args.warmup))
        for name, session in local.items()
    }
    found["triton sync"] = lambda: timed(lambda: triton_call(batch), args.seconds,
                                         args.warmup)
    found[f"triton async x{args.concurrency}"] = lambda: timed_async(
        target.url, target, batch, args.seconds, args.warmup, args.concurrency)
    return found


def summarise(method: str, batch: int, point: dict[str, Any], server0: float | None,
              server1: float | None) -> dict[str, Any]:
    latencies = np.asarray(point["latencies"]) * 1e3
    calls = len(latencies)
    server = None if server0 is None or server1 is None else round(server1 - server0, 3)
    return {
        "method": method, "batch": batch, "calls": calls,
        "seconds": round(point["elapsed"], 3),
        "rows_per_s": round(calls * batch / point["elapsed"], 1),
        "calls_per_s": round(calls / point["elapsed"], 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 4),
        "p99_ms": round(float(np.percentile(latencies, 99)), 4),
        "client_cpu_s": round(point["client_cpu"], 3),
        "server_cpu_s": server,
    }


def triton_providers(log: Path | None) -> list[str] | str:
    """The execution providers the python backend reported in Triton's log."""
    if log is None:
        return "unknown (Triton not started by the benchmark)"
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "unknown (no Triton log)"
    found = [line.rsplit(" scores on ", 1)[1].strip(" \"'") for line in lines
             if " scores on " in line]
    return list(dict.fromkeys(found)) or "unknown (not in Triton's log)"


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


def start_triton(work: Path, config: ModelConfig, kind: ModelKind,
                 queue_delay_us: int | None = None) -> tuple[Stack, Target]:
    """Publish a model into a repository copy and start a Triton over it on free ports;
    with ``queue_delay_us``, the copy's dynamic batcher waits that long for a fuller batch."""
    from streams.clients.triton_models import load_model

    repo = work / "triton_repo"
    version_dir, model = publish_model(repo, config.n_features, kind)
    if queue_delay_us is not None:
        path = repo / MODEL_NAME / "config.pbtxt"
        text, found = re.subn(r"max_queue_delay_microseconds:\s*\d+",
                              f"max_queue_delay_microseconds: {queue_delay_us}",
                              path.read_text())
        if not found:
            raise SystemExit(f"--queue-delay-us: no dynamic batcher delay in {path}")
        path.write_text(text)
    settings = isolated_settings(
        work / "state",
        ("triton_http_port", "triton_grpc_port", "triton_metrics_port", "prometheus_port"),
        kafka=KafkaSettings())
    stack = Stack(settings, kafka_layout(settings.partitions), triton_repo=repo)
    print("starting Triton ...", file=sys.stderr, flush=True)
    try:
        url = stack.up(["triton"], echo=False).triton
        load_model(url, [1], repo=repo)
    except BaseException:
        stack.down(["triton"], echo=False)
        raise
    service = stack.services["triton"]
    return stack, Target(url, 1, version_dir / "model.onnx", config, model,
                         server_pgid=service.pid(), server_log=service.log_file)


def external_target(url: str, version: int | None, repo: Path) -> Target:
    import tritonclient.grpc as grpc

    config = read_model_config(repo / MODEL_NAME / "config.pbtxt")
    if version is None:
        client = grpc.InferenceServerClient(url=url)
        index = client.get_model_repository_index(as_json=True).get("models", [])
        client.close()
        ready = [int(m["version"]) for m in index
                 if m.get("name") == MODEL_NAME and m.get("state") == "READY"]
        if not ready:
            raise SystemExit(f"no ready version of {MODEL_NAME} at {url}; pass --version")
        version = max(ready)
    onnx = repo / MODEL_NAME / str(version) / "model.onnx"
    if not onnx.is_file():
        raise SystemExit(f"{onnx} is missing: onnxruntime must run the version Triton serves")
    return Target(url, version, onnx, config, {"kind": f"served version {version}"})


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
