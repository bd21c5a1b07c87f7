"""Benchmark: end-to-end scored events/s and latency of the live factory.

    python -m bench.e2e [--events N] [--seconds S] [--warmup S] [--rate R] [--quick]

Starts its own Kafka, Redis and Triton (free ports, a temporary state folder), trains
and publishes a model as the main job does (:func:`streams.jobs.job.ensure_first_model`, the
recipe on a small simulated world), loads it, then streams the handbook's simulated
transactions (the cached main dataset, in event-time order) with their labels, each
label sent once the stream's event clock passes its ``known_at`` (as the replay
producer does), to one labels worker and one scoring worker in **live** mode (scores at
once, never waits for labels):

1. **max rate**: ``--events`` transactions (and their due labels) are pre-filled before
   the workers start; the rate is distinct scores per second from the first to the last
   score on ``scores`` (the score records' Kafka timestamps);
2. **latency**: then transactions are produced at a steady ``--rate`` (default half the
   measured maximum), evenly spaced, for ``--warmup`` seconds not measured (a fresh
   broker's JIT and the workers' first batches), then for ``--seconds``; each one's
   latency is the Kafka timestamp of its score minus the Kafka timestamp of the
   transaction (both CreateTime,
   set when the message is produced: transaction by this benchmark, score by the worker,
   so it includes the producer's linger, the broker, the worker's batching and the
   whole scoring stage), and separately the score record's own ``latency_ms`` (the
   worker's clock when the score is built minus the transaction's timestamp).

Both workers' ``factory_stage_seconds`` (where the time goes) are collected per phase,
with their CPU seconds. With ``--profile``, a second backlog (a quarter of ``--events``)
follows the max-rate phase with the scoring worker sampled by py-spy (the sampler's own
CPU kept out of the figures); the workers' logs are kept beside the report. Writes
``bench/results/e2e.json`` and ``bench/results/e2e.png`` (latency CDF, and the median by
second: flat when the worker keeps up) and prints a table. Everything runs on this
machine: the benchmark's own producer and the services share its cores with the workers.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

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
from bench.e2e_report import plot, print_table
from bench.e2e_rig import (
    Feed,
    batch_counts,
    cpu,
    per_event,
    percentiles,
    phase_stages,
    read_back,
    wait_scored,
)
from bench.profile import Sampler, profile_report, py_spy
from infra.local.base import free_port
from infra.local.manager import Stack
from streams.clients.kafka_io import topic_end_offsets
from streams.clients.triton_models import load_model
from streams.dataplane.worker import WorkerProcess
from streams.jobs.job import JobSize, ensure_first_model, reset_online_store, stage_seconds
from streams.replay.dataset import Dataset
from streams.settings import REPO_ROOT
from streams.topics import SCORES, TRANSACTIONS, kafka_layout

RESULTS = REPO_ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000,
                        help="transactions pre-filled for the max-rate phase")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="duration of the steady-rate latency phase")
    parser.add_argument("--rate", type=float, default=None,
                        help="events/s of the latency phase (default: half the max rate)")
    parser.add_argument("--batch-wait", type=float, default=None,
                        help="the scoring worker's --batch-wait (default: its own)")
    parser.add_argument("--warmup", type=float, default=15.0,
                        help="seconds at each latency phase's rate before it is measured")
    parser.add_argument("--steady-rate", type=float, default=1000.0,
                        help="events/s of a second latency phase (0: none)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run: 5,000 events, 15 s, a smaller training world")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction,
                        default=py_spy() is not None,
                        help="sample the scoring worker with py-spy during the max-rate "
                             "phase (default: when py-spy is installed)")
    parser.add_argument("--output", type=Path, default=RESULTS / "e2e.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.seconds = min(args.events, 5_000), min(args.seconds, 15.0)
        args.warmup = min(args.warmup, 2.0)

    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    repo = model_repository(work / "triton_repo")
    settings = isolated_settings(work / "state", STACK_PORTS)
    stack = Stack(settings, kafka_layout(settings.partitions), triton_repo=repo)
    services = ["kafka", "redis", "triton"]
    workers: list[WorkerProcess] = []
    feed: Feed | None = None
    began = time.monotonic()
    try:
        log("starting Kafka, Redis and Triton on free ports")
        endpoints = stack.up(services, echo=False)
        reset_online_store(endpoints.redis)
        from models.trainer import frame_from_simulator

        world = (200, 400) if args.quick else (500, 1000)
        log(f"training the first model on a simulated world of {world[0]} cards")
        version = ensure_first_model(repo, frame_from_simulator(*world, days=31), JobSize())
        load_model(endpoints.triton, [version], repo=repo)

        dataset = Dataset.from_frame(handbook_frame())
        if args.events >= len(dataset):
            raise SystemExit(f"--events {args.events:,}: the dataset has {len(dataset):,}")
        feed = Feed(dataset, endpoints.kafka, settings)
        log(f"pre-filling {args.events:,} transactions and their due labels")
        start_scores = topic_end_offsets(endpoints.kafka, settings, SCORES)
        prefill_s = feed.prefill(args.events)
        prefill_labels = feed.labels_sent

        common = {"env": {"FACTORY_STATE_DIR": str(settings.state_dir)},
                  "offset_reset": "earliest"}
        workers = [
            WorkerProcess(settings, "bench-e2e-labels", role="labels",
                          extra_args=["--batch-wait", "0.5", "--batch-max", "4096"],
                          log_path=str(work / "labels-worker.log"),
                          metrics_port=free_port(), **common),
            WorkerProcess(settings, "bench-e2e", role="score", mode="live",
                          labels_group="bench-e2e-labels",
                          feature_log=str(work / "feature_log"),
                          log_path=str(work / "score-worker.log"),
                          extra_args=(["--batch-wait", str(args.batch_wait)]
                                      if args.batch_wait is not None else []),
                          metrics_port=free_port(), **common),
        ]
        scorer = workers[1]
        log("starting a labels worker and a scoring worker (live mode)")
        started = time.monotonic()
        for worker in workers:
            worker.start(endpoints.kafka)
        cpu0 = {f"{w.role} worker": process_cpu_seconds(w.proc.pid if w.proc else None)
                for w in workers}
        service_pgids = {name: stack.services[name].pid() for name in services}
        services0 = {name: group_cpu_seconds(pgid) for name, pgid in service_pgids.items()}
        wait_scored(workers, scorer, args.events, timeout_s=3600, logs=work)
        backlog_wall = time.monotonic() - started
        services_a = {name: group_cpu_seconds(pgid) for name, pgid in service_pgids.items()}
        stages_a = stage_seconds(workers)
        batches_a = batch_counts(scorer)
        cpu_a = {f"{w.role} worker": process_cpu_seconds(w.proc.pid if w.proc else None)
                 for w in workers}
        scores_a = read_back(endpoints.kafka, settings, SCORES, start_scores, args.events)
        stamps = np.array([s for s, _ in scores_a.values()], dtype=np.int64)
        span_s = (stamps.max() - stamps.min()) / 1000
        max_rate = len(scores_a) / span_s if span_s > 0 else float("nan")
        log(f"max rate: {len(scores_a):,} scored in {span_s:.1f} s = {max_rate:,.0f} events/s")

        profile = None
        if args.profile and scorer.proc is not None:
            # Sampling costs CPU on a machine this small, so the profile is taken on a
            # second backlog, after the maximum rate was measured without it.
            extra = args.events // 4
            log(f"profile: {extra:,} more transactions (and their due labels) sent as fast "
                f"as they can be, the scoring worker sampled by py-spy while it keeps up")
            sampler = Sampler(scorer.proc.pid, work / "profile.txt")
            profiled = time.monotonic()
            feed.prefill(feed.next_row + extra)
            wait_scored(workers, scorer, feed.next_row, timeout_s=600, logs=work)
            profile = profile_report(sampler.stop(), time.monotonic() - profiled,
                                     sampler.rate)
            profile["events"] = extra
            if "stacks_file" in profile:
                args.output.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(work / "profile.txt", args.output.with_suffix(".profile.txt"))
                profile["stacks_file"] = args.output.with_suffix(".profile.txt").name

        def cpu_now() -> dict[str, float | None]:
            now = {f"{w.role} worker": process_cpu_seconds(w.proc.pid if w.proc else None)
                   for w in workers}
            return now | {name: group_cpu_seconds(pgid)
                          for name, pgid in service_pgids.items()}

        def latency_phase(rate: float, seconds: float, source: str,
                          reserve: int = 0) -> dict[str, Any]:
            """Transactions at a steady ``rate`` for ``seconds``: latency, stages, CPU;
            ``reserve`` rows of the dataset are left for a later phase (a fast machine's
            half load would otherwise use the whole dataset)."""
            assert feed is not None
            if args.warmup > 0:
                # The same rate, not measured: a freshly started broker's JIT compiles
                # its small-request paths in the first tens of seconds (the broker's CPU
                # at 1,000 messages/s fell to a third after them), as do the workers'.
                warm = min(int(rate * args.warmup), len(dataset) - feed.next_row - reserve)
                log(f"warm-up: {warm:,} transactions at {rate:,.0f}/s, not measured")
                feed.paced(feed.next_row + warm, rate)
                wait_scored(workers, scorer, feed.next_row, timeout_s=600, logs=work)
            done = feed.next_row
            rows = min(int(rate * seconds), len(dataset) - done - reserve)
            start_tx = topic_end_offsets(endpoints.kafka, settings, TRANSACTIONS)
            start_scores = topic_end_offsets(endpoints.kafka, settings, SCORES)
            labels_before = feed.labels_sent
            stages0, batches0, cpu0_ = stage_seconds(workers), batch_counts(scorer), cpu_now()
            log(f"latency phase: {rows:,} transactions at {rate:,.0f}/s for "
                f"{rows / rate:.0f} s")
            produce_s = feed.paced(done + rows, rate)
            wait_scored(workers, scorer, done + rows, timeout_s=600, logs=work)
            stages1, batches1, cpu1 = stage_seconds(workers), batch_counts(scorer), cpu_now()
            transactions = read_back(endpoints.kafka, settings, TRANSACTIONS, start_tx, rows)
            scores = read_back(endpoints.kafka, settings, SCORES, start_scores, rows)
            common_ids = sorted(set(transactions) & set(scores))
            sent_ms = np.array([transactions[t][0] for t in common_ids], float)
            e2e_ms = np.array([scores[t][0] for t in common_ids], float) - sent_ms
            record_ms = np.array([scores[t][1] for t in common_ids], float)
            second = ((sent_ms - sent_ms.min()) // 1000).astype(np.int64)
            by_second = [round(float(np.median(e2e_ms[second == i])), 1)
                         for i in range(int(second.max()) + 1) if (second == i).any()]
            log(f"latency at {rate:,.0f}/s: p50 {np.percentile(e2e_ms, 50):.1f} ms, "
                f"p99 {np.percentile(e2e_ms, 99):.1f} ms over {len(e2e_ms):,} transactions")
            n_batches = batches1[0] - batches0[0]
            return {
                "target_rate": rate, "rate_source": source,
                "events": rows, "labels": feed.labels_sent - labels_before,
                "produce_s": round(produce_s, 2),
                "achieved_rate": round(rows / produce_s, 1) if produce_s else None,
                "matched": len(common_ids),
                "kafka_timestamps_ms": percentiles(e2e_ms),
                "score_record_latency_ms": percentiles(record_ms),
                "kafka_timestamps_p50_ms_by_second": by_second,
                "stage_seconds": phase_stages(stages1, stages0),
                "cpu_s": cpu(cpu1, cpu0_),
                "cpu_us_per_event": per_event(cpu(cpu1, cpu0_), rows),
                "micro_batches": n_batches,
                "mean_batch": (round((batches1[1] - batches0[1]) / n_batches, 1)
                               if n_batches else None),
                "_plot": (e2e_ms, record_ms, by_second),
            }

        later = (int(args.steady_rate * (max(args.warmup, 0) + args.seconds))
                 if args.steady_rate else 0)
        half = latency_phase(args.rate or round(0.5 * max_rate), args.seconds,
                             "--rate" if args.rate else "0.5 x max rate", reserve=later)
        steady = (latency_phase(args.steady_rate, args.seconds, "--steady-rate")
                  if args.steady_rate else None)
    finally:
        for worker in workers:
            worker.stop()
        for worker in workers:  # kept beside the report: a stall leaves its trace there
            source = Path(worker.log_path) if worker.log_path else None
            if source is not None and source.exists():
                args.output.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(source, args.output.with_suffix(f".{source.name}"))
        # The producer goes before the broker, or librdkafka logs its reconnect attempts.
        feed = None
        stack.down(services, echo=False)
        shutil.rmtree(work, ignore_errors=True)  # the run's Kafka log: gigabytes

    report: dict[str, Any] = {
        "benchmark": "end to end, live mode: one labels worker, one scoring worker",
        "command": command_line("bench.e2e", argv),
        "date": utc_date(),
        "quick": args.quick,
        "partitions": settings.partitions,
        "data": "handbook main simulation (5,000 cards, 10,000 terminals), first rows "
                "in event-time order, labels sent when the event clock passes known_at",
        "max_rate": {
            "events": args.events, "labels_prefilled": prefill_labels,
            "prefill_s": round(prefill_s, 2), "scored_distinct": len(scores_a),
            "first_to_last_score_s": round(span_s, 3),
            "events_per_s": round(max_rate, 1),
            "worker_start_to_last_score_s": round(backlog_wall, 2),
            "stage_seconds": stages_a, "worker_cpu_s": cpu(cpu_a, cpu0),
            "cpu_us_per_event": per_event(cpu(cpu_a, cpu0) | cpu(services_a, services0),
                                          len(scores_a)),
            "micro_batches": batches_a[0],
            "mean_batch": round(batches_a[1] / batches_a[0], 1) if batches_a[0] else None,
            "services_cpu_s": cpu(services_a, services0),
            "scoring_worker_profile": profile,
        },
        "latency": {k: v for k, v in half.items() if k != "_plot"},
        "latency_steady": ({k: v for k, v in steady.items() if k != "_plot"}
                           if steady is not None else None),
        "total_wall_s": round(time.monotonic() - began, 1),
        "machine": machine_info(gpu=shutil.which("nvidia-smi") is not None,
                                **kafka_versions()),
    }
    write_report(args.output, report)
    plot([(half["target_rate"], *half["_plot"])]
         + ([(steady["target_rate"], *steady["_plot"])] if steady is not None else []),
         args.output.with_suffix(".png"))
    print_table(report, args.output)
    phases = [half] + ([steady] if steady is not None else [])
    complete = all(phase["matched"] == phase["events"] for phase in phases)
    return 0 if len(scores_a) >= args.events and complete else 1


if __name__ == "__main__":
    sys.exit(main())
