"""Benchmark of Feast's Python SDK against the fast path on its Redis layout, per row.

    python -m bench.feast_paths [--batches 1,100,1000] [--min-time S] [--labels N]
                                [--skip-dedup repo|true|false]

Starts its own ``redis-server`` on a free port (stopped at the end), applies the feature
repository to it, and times each operation of the worker through
:class:`streams.clients.feast_client.OnlineFeatures` (the SDK: ``store.push`` and
``get_online_features``) and :class:`streams.clients.feast_fast.FastOnlineFeatures`, for each
batch size: card pushes and reads (6 scalars), terminal pushes (6 scalars and 3 label
arrays of ``--labels`` elements), terminal label reads and terminal scalar reads. Each
call is repeated for at least ``--min-time`` seconds, in five windows of which the fastest
counts (other processes on a shared host only add time); every push carries a later event
time than the last, so that no row is skipped as stale. Writes
``bench/results/feast_paths.json`` and prints a table of microseconds a row, of wall time
and of CPU time of the calling thread (what a worker's event-loop thread pays).

Applying the repository rewrites ``feature_repo/data/registry.db`` with the same
definitions.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine_info, utc_date, write_report
from infra.local.base import free_port, port_is_open
from streams.settings import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results" / "feast_paths.json"
ID_BASE = {"sdk": 800_000_000, "fast": 810_000_000}


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway ``redis-server`` on a free port, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not port_is_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


def machine() -> dict[str, object]:
    """The host, and the versions of Feast, redis-py and redis-server."""
    import feast
    import redis

    server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    return machine_info(
        feast=feast.__version__,
        redis_py=redis.__version__,
        redis_server=server.stdout.split()[2] if server.returncode == 0 else "unknown",
    )


def timed(call: Callable[[], object], min_time: float,
          windows: int = 5) -> tuple[float, float, int]:
    """Wall and calling-thread CPU seconds a call, and the calls made.

    After one warm-up call, ``windows`` windows of at least ``min_time / windows`` seconds
    (and three calls) each; the means of the fastest window are kept, as other processes
    on a shared host only ever add time.
    """
    call()
    best: tuple[float, float] | None = None
    total = 0
    for _ in range(windows):
        reps, started, cpu_started = 0, time.perf_counter(), time.thread_time()
        while True:
            reps += 1
            call()
            elapsed = time.perf_counter() - started
            if elapsed >= min_time / windows and reps >= 3:
                break
        total += reps
        window = (elapsed / reps, (time.thread_time() - cpu_started) / reps)
        best = window if best is None or window[0] < best[0] else best
    assert best is not None
    return best[0], best[1], total


def operations(features: Any, ids: np.ndarray, labels: int, rng: np.random.Generator,
               clock: Iterator[int]) -> dict[str, Callable[[], object]]:
    """The five timed operations on one implementation, for entity ``ids``.

    Pushes take their event times from ``clock``, one later second a call.
    """
    n = len(ids)
    card_values = np.column_stack([rng.integers(0, 50, n), rng.uniform(1, 200, n)] * 3)
    terminal_values = np.column_stack([rng.integers(0, 500, n), rng.uniform(0, 1, n)] * 3)
    start = 1.6e9 + rng.uniform(0, 86_400, labels).cumsum()
    arrays = [(start.tolist(), (start + 604_800).tolist(),
               rng.integers(0, 2, labels).tolist()) for _ in range(n)]

    def times() -> np.ndarray:
        return np.full(n, 1.7e9 + next(clock), dtype=np.float64)

    return {
        "card push": lambda: features.push_card_activity(ids, times(), card_values),
        "card read": lambda: features.read("card_activity", "card_id", ids),
        "terminal push": lambda: features.push_terminal_risk(ids, times(),
                                                                  terminal_values, arrays),
        "terminal labels read": lambda: features.read_terminal_labels(ids),
        "terminal scalars read": lambda: features.read("terminal_risk", "terminal_id",
                                                           ids),
    }


def run(url: str, batches: list[int], min_time: float, labels: int,
        skip_dedup: bool | None) -> tuple[list[dict[str, Any]], bool]:
    from streams.clients.feast_client import OnlineFeatures, apply_repo, open_store
    from streams.clients.feast_fast import FastOnlineFeatures

    apply_repo(url)
    store = open_store(url)
    if skip_dedup is not None:
        store.config.online_store.skip_dedup = skip_dedup
    fast = FastOnlineFeatures(store)
    paths = {"sdk": OnlineFeatures(store), "fast": fast}
    clock = itertools.count(1)
    results = []
    for batch in batches:
        plans = {path: operations(features, np.arange(batch, dtype=np.int64) + ID_BASE[path],
                                  labels, np.random.default_rng(batch), clock)
                 for path, features in paths.items()}
        for operation in plans["sdk"]:
            row: dict[str, Any] = {"operation": operation, "batch": batch}
            for path, plan in plans.items():
                seconds, cpu, reps = timed(plan[operation], min_time)
                row[f"{path}_us_per_row"] = round(seconds / batch * 1e6, 2)
                row[f"{path}_cpu_us_per_row"] = round(cpu / batch * 1e6, 2)
                row[f"{path}_ms_per_call"] = round(seconds * 1e3, 3)
                row[f"{path}_calls"] = reps
            row["speedup"] = round(row["sdk_us_per_row"] / row["fast_us_per_row"], 1)
            results.append(row)
            print(f"  {operation:<22} batch {batch:>5}: sdk {row['sdk_us_per_row']:>9.1f} "
                  f"us/row, fast {row['fast_us_per_row']:>7.1f} us/row", file=sys.stderr)
    fast.close()
    return results, store.config.online_store.skip_dedup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feast_paths", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,100,1000",
                        help="comma-separated batch sizes (entities a call)")
    parser.add_argument("--min-time", type=float, default=2.0,
                        help="seconds each measurement runs at least")
    parser.add_argument("--labels", type=int, default=40,
                        help="elements in each terminal label array")
    parser.add_argument("--skip-dedup", choices=("repo", "true", "false"), default="repo",
                        help="the online store's skip_dedup for both paths (default: as "
                             "feature_store.yaml sets it)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    warnings.filterwarnings("ignore")
    process, url = start_redis()
    try:
        skip_dedup = None if args.skip_dedup == "repo" else args.skip_dedup == "true"
        results, skip_dedup = run(url, batches, args.min_time, args.labels, skip_dedup)
    finally:
        process.terminate()
        process.wait(timeout=10)

    report: dict[str, Any] = {
        "benchmark": "Feast SDK against the fast path on its Redis layout",
        "date": utc_date(),
        "min_time_s": args.min_time, "label_array_elements": args.labels,
        "skip_dedup": skip_dedup,
        "machine": machine(), "runs": results,
    }
    write_report(args.output, report)

    header = f"{'operation':<22} {'batch':>6} {'SDK us/row':>11} {'fast us/row':>12} " \
             f"{'SDK CPU':>8} {'fast CPU':>9} {'SDK ms/call':>12} {'fast ms/call':>13} " \
             f"{'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for r in sorted(results, key=lambda r: (r["operation"], r["batch"])):
        print(f"{r['operation']:<22} {r['batch']:>6} {r['sdk_us_per_row']:>11.1f} "
              f"{r['fast_us_per_row']:>12.1f} {r['sdk_cpu_us_per_row']:>8.1f} "
              f"{r['fast_cpu_us_per_row']:>9.1f} {r['sdk_ms_per_call']:>12.3f} "
              f"{r['fast_ms_per_call']:>13.3f} {r['speedup']:>8.1f}x")
    info = report["machine"]
    print(f"\n{info['cpu']} ({info['cpus']} CPUs, load {info['load_average_1m']}), "
          f"Feast {info['feast']}, redis-server {info['redis_server']}, "
          f"skip_dedup {skip_dedup}; CPU: microseconds of the calling thread a row; "
          f"results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
