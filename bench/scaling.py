"""Benchmark: scored events/s with 1, 2 and 4 scoring workers in one consumer group.

    python -m bench.scaling [--events N] [--workers 1,2,4] [--partitions 8] [--quick]

Starts its own Kafka, Redis and Triton (free ports, a temporary state folder) with
``--partitions`` partitions a topic, trains and loads a first model as :mod:`bench.e2e`
does, and pre-fills ``--events`` transactions of the handbook's simulation with their due
labels. One labels worker applies the labels first and stops (the scorers run in live
mode and never wait for labels). Then, for each count in ``--workers``, that many scoring
workers are started at once in a new consumer group that starts at the topic's end; once
every worker owns partitions, the group owns them all and no rebalance has come for 3 s,
the same ``--events`` transactions are produced again as fast as Kafka takes them, and
the window runs from the first to the last score. For each count: scores a second in the
window, the CPU seconds of each process over it (the scoring workers, Kafka, Redis,
Triton, and this bench's producer) as microseconds an event, and
the workers' stage seconds (where their time goes).

On paper, from the 1-worker CPU figures: the events a second that N cores would carry
with Triton on the CPU, and with a GPU Triton (its model arithmetic off the cores: the
bound with none of its host CPU, and the bound with all of it). Writes
``bench/results/scaling.json`` and ``bench/results/scaling.png`` and prints the tables.
Everything runs on this machine: on 2 cores, more workers than cores share them, which
is what the figures show.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    STACK_PORTS,
    command_line,
    group_cpu_seconds,
    handbook_frame,
    isolated_settings,
    kafka_versions,
    log,
    machine_info,
    model_repository,
    process_cpu_seconds,
    utc_date,
    write_report,
)
from bench.e2e_rig import Feed, cpu, per_event, read_back
from infra.local.base import free_port
from infra.local.manager import Stack
from streams.clients.kafka_io import pin_new_group, topic_end_offsets
from streams.clients.triton_models import load_model
from streams.dataplane.worker import WorkerProcess
from streams.jobs.job import JobSize, ensure_first_model, reset_online_store
from streams.replay.dataset import Dataset
from streams.settings import REPO_ROOT, Settings
from streams.topics import SCORES, TRANSACTIONS, kafka_layout

RESULTS = REPO_ROOT / "bench" / "results"
PROJECTED_CORES = (2, 8, 16, 32, 64)
STAGE_PREFIX = 'factory_stage_seconds_total{stage="'


def worker_env(settings: Settings) -> dict[str, str]:
    """What a worker process needs to find this stack and its topics' partition count."""
    return {"FACTORY_STATE_DIR": str(settings.state_dir),
            "FACTORY_PARTITIONS": str(settings.partitions)}


def _owned(worker: WorkerProcess) -> float:
    return worker.metrics().get('factory_partitions_owned{topic="transactions"}', 0.0)


def _scored(workers: list[WorkerProcess]) -> float:
    return sum(w.metrics().get("factory_events_scored_total", 0.0) for w in workers)


def _stages(workers: list[WorkerProcess]) -> dict[str, float]:
    """Seconds in each stage, summed over ``workers``."""
    total: dict[str, float] = {}
    for worker in workers:
        for name, value in worker.metrics().items():
            if name.startswith(STAGE_PREFIX):
                stage = name[len(STAGE_PREFIX):-2]
                total[stage] = total.get(stage, 0.0) + value
    return total


def _start_all(workers: list[WorkerProcess], bootstrap: str) -> None:
    """Start ``workers`` at the same moment (each start waits for its group)."""
    errors: list[BaseException] = []

    def start(worker: WorkerProcess) -> None:
        try:
            worker.start(bootstrap, timeout_s=180.0)
        except BaseException as exc:  # noqa: BLE001 - raised after the join
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"a scoring worker did not start: {errors[0]}")


def _cpu(workers: list[WorkerProcess], services: dict[str, int | None]) -> dict[str, Any]:
    return ({f"scoring worker {i + 1}": process_cpu_seconds(w.proc.pid if w.proc else None)
             for i, w in enumerate(workers)}
            | {name: group_cpu_seconds(pgid) for name, pgid in services.items()}
            | {"producer (this bench)": process_cpu_seconds(os.getpid())})


def _settled(workers: list[WorkerProcess], partitions: int, timeout_s: float = 180.0,
             quiet_s: float = 3.0) -> list[float]:
    """Wait until every worker owns partitions, the group owns them all, and no
    assignment has reached any worker for ``quiet_s``; the partitions each owns."""
    deadline = time.monotonic() + timeout_s
    last: tuple[float, ...] = ()
    since = time.monotonic()
    while True:
        owned = [_owned(w) for w in workers]
        rounds = tuple(w.metrics().get("factory_partition_assignments_total", 0.0)
                       for w in workers)
        if rounds != last:
            last, since = rounds, time.monotonic()
        if (all(o > 0 for o in owned) and sum(owned) == partitions
                and time.monotonic() - since >= quiet_s):
            return owned
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(workers)} workers: partitions not shared in "
                             f"{timeout_s:.0f} s: {owned}")
        time.sleep(0.2)


def scaling_run(count: int, events: int, feed: Feed, settings: Settings, bootstrap: str,
                work: Path, services: dict[str, int | None]) -> dict[str, Any]:
    """``count`` scoring workers in one new group, joined and settled before the first
    of ``events`` transactions is produced; the window runs from that first one to the
    last score."""
    group = f"bench-scale-{count}"
    workers = [
        WorkerProcess(settings, group, role="score", mode="live", offset_reset="latest",
                      env=worker_env(settings),
                      feature_log=str(work / f"feature_log-{count}"),
                      log_path=str(work / f"score-{count}-{i}.log"), metrics_port=free_port())
        for i in range(count)
    ]
    keys, values = feed.dataset.encode_transactions(0, events)
    start_scores = topic_end_offsets(bootstrap, settings, SCORES)
    try:
        log(f"{count} scoring worker(s) in group {group}: starting")
        pin_new_group(bootstrap, settings, group, TRANSACTIONS)  # they start at the end
        _start_all(workers, bootstrap)
        owned = _settled(workers, settings.partitions)
        scored0 = _scored(workers)
        cpu0 = _cpu(workers, services)
        stages0 = _stages(workers)
        opened = time.time()
        log(f"  partitions {[int(o) for o in owned]}: producing {events:,} transactions")
        producing = threading.Thread(target=lambda: (
            feed.send_raw(TRANSACTIONS, keys, values), feed.flush()))
        producing.start()
        shown = moved = time.monotonic()
        last = scored0
        while (now_scored := _scored(workers)) - scored0 < events:
            if not all(w.alive() for w in workers):
                raise SystemExit(f"a scoring worker stopped; see {work}/score-{count}-*.log")
            if now_scored > last:
                last, moved = now_scored, time.monotonic()
            elif time.monotonic() - moved > 120:
                raise SystemExit(f"{count} workers: no event scored in 120 s; see "
                                 f"{work}/score-{count}-*.log")
            if time.monotonic() - shown > 5:
                shown = time.monotonic()
                log(f"  {now_scored - scored0:,.0f} of {events:,} scored")
            time.sleep(0.2)
        producing.join()
        cpu1 = _cpu(workers, services)
        stages1 = _stages(workers)
        final_owned = [_owned(w) for w in workers]
    finally:
        for worker in workers:
            worker.stop()
    scores = read_back(bootstrap, settings, SCORES, start_scores, events)
    in_window = [stamp for stamp, _ in scores.values()]
    span_s = (max(in_window) / 1000 - opened) if in_window else 0.0
    rate = len(in_window) / span_s if span_s > 0 else 0.0
    used = cpu(cpu1, cpu0)
    workers_cpu = sum(v for k, v in used.items() if k.startswith("scoring worker") and v)
    figures = per_event(used, len(in_window))
    figures["scoring workers"] = round(workers_cpu / len(in_window) * 1e6, 1) if in_window else 0
    log(f"  {count} worker(s): {len(in_window):,} scored in {span_s:.1f} s = {rate:,.0f} "
        f"events/s; {figures.get('all processes', 0):,.0f} µs of CPU an event")
    return {
        "scoring_workers": count, "group": group,
        "partitions_owned_at_open": [int(o) for o in owned],
        "partitions_owned_at_close": [int(o) for o in final_owned],
        "scored_distinct": len(scores),
        "scored_in_window": len(in_window), "window_s": round(span_s, 2),
        "events_per_s": round(rate, 1),
        "cpu_s": used, "cpu_us_per_event": figures,
        "cores_busy": round(sum(v for v in used.values() if v) / span_s, 2) if span_s else None,
        "stage_seconds": {k: round(v - stages0.get(k, 0.0), 3) for k, v in stages1.items()},
    }


def projection(run: dict[str, Any]) -> dict[str, Any]:
    """Events a second N cores would carry, from one run's CPU microseconds an event.

    Assumes what the partitioned design gives (workers share nothing but Kafka, Redis and
    Triton, so a worker's cost an event does not grow with the count), as many partitions
    as workers, and the services on the same N cores. ``gpu_*``: Triton's model arithmetic
    on a GPU; its host CPU an event lies between none and all of what it spends here."""
    us = run["cpu_us_per_event"]
    worker = us["scoring workers"]
    services = sum(us.get(name, 0.0) for name in ("kafka", "redis"))
    triton = us.get("triton", 0.0)
    rows = []
    for cores in PROJECTED_CORES:
        budget = cores * 1e6
        rows.append({
            "cores": cores,
            "cpu_triton_events_per_s": round(budget / (worker + services + triton)),
            "gpu_triton_events_per_s_low": round(budget / (worker + services + triton)),
            "gpu_triton_events_per_s_high": round(budget / (worker + services)),
        })
    return {"from_run": run["scoring_workers"], "worker_us": worker,
            "kafka_and_redis_us": round(services, 1), "triton_us": triton, "rows": rows}


def plot(runs: list[dict[str, Any]], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    counts = [str(r["scoring_workers"]) for r in runs]
    left.bar(counts, [r["events_per_s"] for r in runs], color="tab:blue")
    left.set_xlabel("scoring workers (one consumer group)")
    left.set_ylabel("scored events/s")
    left.set_title("throughput")
    parts = ["scoring workers", "kafka", "redis", "triton"]
    bottom = [0.0] * len(runs)
    for part in parts:
        values = [r["cpu_us_per_event"].get(part, 0.0) for r in runs]
        right.bar(counts, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set_xlabel("scoring workers")
    right.set_ylabel("CPU µs an event")
    right.set_title("where the cores went")
    right.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=150_000,
                        help="transactions pre-filled; each worker count scores them all")
    parser.add_argument("--workers", default="1,2,4",
                        help="comma-separated scoring worker counts, in order")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run: 10,000 events, a smaller training world")
    parser.add_argument("--output", type=Path, default=RESULTS / "scaling.json")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.workers.split(",")]
    if max(counts) > args.partitions:
        raise SystemExit(f"--workers {max(counts)} > --partitions {args.partitions}: a "
                         "worker would own no partition")
    if args.quick:
        args.events = min(args.events, 10_000)

    work = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    repo = model_repository(work / "triton_repo")
    settings = isolated_settings(work / "state", STACK_PORTS, partitions=args.partitions)
    stack = Stack(settings, kafka_layout(settings.partitions), triton_repo=repo)
    names = ["kafka", "redis", "triton"]
    began = time.monotonic()
    runs: list[dict[str, Any]] = []
    try:
        log(f"starting Kafka ({args.partitions} partitions a topic), Redis and Triton")
        endpoints = stack.up(names, echo=False)
        reset_online_store(endpoints.redis)
        from models.trainer import frame_from_simulator

        world = (200, 400) if args.quick else (500, 1000)
        log(f"training the first model on a simulated world of {world[0]} cards")
        version = ensure_first_model(repo, frame_from_simulator(*world, days=31), JobSize())
        load_model(endpoints.triton, [version], repo=repo)
        feed = Feed(Dataset.from_frame(handbook_frame()), endpoints.kafka, settings)
        log(f"pre-filling {args.events:,} transactions and their due labels")
        feed.prefill(args.events)
        labels = WorkerProcess(settings, "bench-scale-labels", role="labels",
                               offset_reset="earliest",
                               env=worker_env(settings),
                               extra_args=["--batch-wait", "0.5", "--batch-max", "4096"],
                               log_path=str(work / "labels-worker.log"),
                               metrics_port=free_port())
        log(f"applying the {feed.labels_sent:,} labels first (one labels worker)")
        labels.start(endpoints.kafka)
        try:
            while labels.metrics().get("factory_labels_in_total", 0.0) < feed.labels_sent:
                if not labels.alive():
                    raise SystemExit(f"the labels worker stopped; see {work}/labels-worker.log")
                time.sleep(0.5)
        finally:
            labels.stop()
        services = {name: stack.services[name].pid() for name in names}
        for count in counts:
            runs.append(scaling_run(count, args.events, feed, settings, endpoints.kafka,
                                    work, services))
    finally:
        stack.down(names, echo=False)
        if len(runs) == len(counts):
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"the workers' logs are kept in {work}")

    base = runs[0]
    report: dict[str, Any] = {
        "benchmark": "scored events/s by scoring workers in one consumer group (live mode)",
        "command": command_line("bench.scaling", argv), "date": utc_date(),
        "quick": args.quick, "events": args.events, "partitions": args.partitions,
        "data": "handbook main simulation, first rows in event-time order; labels applied "
                "before the scorers start",
        "runs": runs,
        "speedup": {str(r["scoring_workers"]): round(r["events_per_s"] / base["events_per_s"],
                                                     2) if base["events_per_s"] else None
                    for r in runs},
        "projection": projection(base),
        "total_wall_s": round(time.monotonic() - began, 1),
        "machine": machine_info(**kafka_versions()),
    }
    write_report(args.output, report)
    plot(runs, args.output.with_suffix(".png"))
    print_table(report, args.output)
    return 0 if all(r["scored_distinct"] >= args.events for r in runs) else 1


def print_table(report: dict[str, Any], output: Path) -> None:
    runs = report["runs"]
    print("\n| scoring workers | partitions owned | scored events/s | speed-up | cores busy "
          "| CPU µs an event: workers / Kafka / Redis / Triton / bench producer / all |\n"
          "|---|---|---|---|---|---|")
    for r in runs:
        us = r["cpu_us_per_event"]
        print(f"| {r['scoring_workers']} | {r['partitions_owned_at_open']} | "
              f"{r['events_per_s']:,.0f} | {report['speedup'][str(r['scoring_workers'])]} | "
              f"{r['cores_busy']} | {us.get('scoring workers', 0):,.0f} / "
              f"{us.get('kafka', 0):,.0f} / {us.get('redis', 0):,.0f} / "
              f"{us.get('triton', 0):,.0f} / {us.get('producer (this bench)', 0):,.0f} / "
              f"{us.get('all processes', 0):,.0f} |")
    stages = sorted({s for r in runs for s in r["stage_seconds"]},
                    key=lambda s: -runs[0]["stage_seconds"].get(s, 0.0))
    print("\n| stage time, µs an event (summed over the workers) | " + " | ".join(
        str(r["scoring_workers"]) for r in runs) + " |\n|---|" + "---|" * len(runs))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(
            f"{r['stage_seconds'].get(stage, 0.0) / max(1, r['scored_in_window']) * 1e6:,.0f}"
            for r in runs) + " |")
    p = report["projection"]
    print(f"\nOn paper, from the {p['from_run']}-worker run ({p['worker_us']:,.0f} µs an event "
          f"in the worker, {p['kafka_and_redis_us']:,.0f} in Kafka and Redis, "
          f"{p['triton_us']:,.0f} in Triton):")
    print("\n| cores | Triton on the CPU, events/s | GPU Triton, events/s |\n|---|---|---|")
    for row in p["rows"]:
        print(f"| {row['cores']} | {row['cpu_triton_events_per_s']:,} | "
              f"{row['gpu_triton_events_per_s_low']:,} - {row['gpu_triton_events_per_s_high']:,} |")
    info = report["machine"]
    print(f"\n{info['cpu']} ({info['cpus']} CPUs, load {info['load_average_1m']}); "
          f"results in {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    sys.exit(main())
