"""Benchmark of the replay producer: the handbook dataset into Kafka, as fast as it goes.

    python -m bench.producer [--rows N] [--bootstrap HOST:PORT] [--no-labels-run]

Replays the full simulated dataset (cached under ``.factory/cache/``; ``--rows N`` takes
the first N rows) with :func:`streams.replay.producer.replay` at ``--speed max`` into two fresh
topics, which are deleted afterwards, then writes ``bench/results/producer.json`` and
prints a table. Kafka is ``--bootstrap``, else the settings' or the local stack's.

Two rates are reported: transactions per wall second, and transactions per CPU second
of the replay's main thread (the Python side: encoding and handing messages to
librdkafka, whose own threads compress and send), which is what one core sustains.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.common import (
    delete_topics,
    handbook_frame,
    isolated_settings,
    kafka_versions,
    machine_info,
    thread_cpu_seconds,
    utc_date,
    write_report,
)
from streams.replay.cli import resolve_bootstrap
from streams.replay.dataset import Dataset
from streams.replay.producer import ReplayOptions, ensure_replay_topics, replay
from streams.settings import REPO_ROOT, Settings

RESULTS = REPO_ROOT / "bench" / "results" / "producer.json"


def run_once(dataset: Dataset, bootstrap: str, settings: Settings, labels: bool) -> dict[str, Any]:
    """One replay into fresh topics; the topics are deleted afterwards."""
    from confluent_kafka.admin import AdminClient

    tag = uuid.uuid4().hex[:8]
    options = ReplayOptions(labels=labels, transactions_topic=f"bench-transactions-{tag}",
                            labels_topic=f"bench-labels-{tag}")
    ensure_replay_topics(settings, bootstrap, [options.transactions_topic, options.labels_topic])
    try:
        thread_before = thread_cpu_seconds()
        process_before = time.process_time()
        report = replay(dataset, bootstrap, settings, options)
        main_cpu = thread_cpu_seconds() - thread_before
        process_cpu = time.process_time() - process_before
    finally:
        admin = AdminClient({**settings.kafka.client_config(bootstrap), "log_level": 0})
        delete_topics(admin, [options.transactions_topic, options.labels_topic])
    return {
        "mode": "transactions + labels" if labels else "transactions only",
        "rows": report.sent,
        "labels": report.labels_sent,
        "messages": report.sent + report.labels_sent,
        "wall_s": round(report.wall_s, 3),
        "events_per_s": round(report.events_per_s),
        "messages_per_s": round((report.sent + report.labels_sent) / report.wall_s),
        "main_thread_cpu_s": round(main_cpu, 3),
        "events_per_main_thread_cpu_s": round(report.sent / main_cpu) if main_cpu else None,
        "process_cpu_s": round(process_cpu, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.producer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="replay the first N rows only")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers")
    parser.add_argument("--no-labels-run", action="store_true",
                        help="also measure a replay of transactions only")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    base = Settings.from_env()
    bootstrap = resolve_bootstrap(args.bootstrap, base)
    frame = handbook_frame(args.rows)
    dataset = Dataset.from_frame(frame)
    results = []
    with tempfile.TemporaryDirectory() as state:
        # Checkpoints of benchmark runs stay out of the factory's state folder.
        settings = isolated_settings(Path(state), base=base)
        for labels in (True, False) if args.no_labels_run else (True,):
            results.append(run_once(dataset, bootstrap, settings, labels))

    report: dict[str, Any] = {"benchmark": "replay producer, --speed max", "bootstrap": bootstrap,
              "date": utc_date(),
              "machine": machine_info(**kafka_versions(), numpy=np.__version__,
                                      pyarrow=pa.__version__),
              "runs": results}
    write_report(args.output, report)

    header = f"{'mode':<22} {'rows':>10} {'messages':>10} {'wall s':>8} {'tx/s':>9} " \
             f"{'msg/s':>9} {'tx/CPU-s (main thread)':>23}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['mode']:<22} {r['rows']:>10,} {r['messages']:>10,} {r['wall_s']:>8.2f} "
              f"{r['events_per_s']:>9,} {r['messages_per_s']:>9,} "
              f"{r['events_per_main_thread_cpu_s'] or 0:>23,}")
    info = report["machine"]
    print(f"\n{info['cpu']} ({info['cpus']} CPUs, load {info['load_average_1m']}), "
          f"librdkafka {info['librdkafka']}; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
