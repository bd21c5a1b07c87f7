"""Timing of the inference paths: in-process onnxruntime sessions and Triton over gRPC.

For each batch size, the same float32 batch goes through an onnxruntime session in this
process (CPU, and CUDA when available), a blocking ``tritonclient.grpc`` call, and
``tritonclient.grpc.aio`` with several requests in flight; Triton's scores are checked
against onnxruntime's first, and each point keeps its latencies, rows a second and CPU
seconds. Used by :mod:`bench.triton_vs_ort`.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.common import group_cpu_seconds
from bench.triton_vs_ort_target import Target
from models.triton_config import MODEL_NAME


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
