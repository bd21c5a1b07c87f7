"""Benchmark of the replay producer: the handbook dataset into Kafka, as fast as it goes.

    python -m bench.producer [--rows N] [--bootstrap HOST:PORT] [--no-labels-run]

Replays the full simulated dataset (cached under ``.factory/cache/``; ``--rows N`` takes
the first N rows) with :func:`streams.producer.replay` at ``--speed max`` into two fresh
topics, which are deleted afterwards, then writes ``bench/results/producer.json`` and
prints a table. Kafka is ``--bootstrap``, else the settings' or the local stack's.

Two rates are reported: transactions per wall second, and transactions per CPU second
of the replay's main thread (the Python side: encoding and handing messages to
librdkafka, whose own threads compress and send), which is what one core sustains.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka
import numpy as np
import pandas as pd
import pyarrow as pa

from streams.producer import ReplayOptions, ensure_replay_topics, replay, resolve_bootstrap
from streams.replay import Dataset
from streams.settings import REPO_ROOT, Settings

RESULTS = REPO_ROOT / "bench" / "results" / "producer.json"


def handbook_frame(rows: int | None) -> pd.DataFrame:
    """The handbook's main dataset from the test cache (simulated and stored when missing)."""
    from tests.models.conftest import MAIN_PARAMETERS, cached_simulation

    frame = cached_simulation(MAIN_PARAMETERS)
    return frame if rows is None else frame.head(rows).reset_index(drop=True)


def machine() -> dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
    }


def run_once(dataset: Dataset, bootstrap: str, settings: Settings, labels: bool) -> dict[str, Any]:
    """One replay into fresh topics; the topics are deleted afterwards."""
    from confluent_kafka.admin import AdminClient

    tag = uuid.uuid4().hex[:8]
    options = ReplayOptions(labels=labels, transactions_topic=f"bench-transactions-{tag}",
                            labels_topic=f"bench-labels-{tag}")
    ensure_replay_topics(settings, bootstrap, [options.transactions_topic, options.labels_topic])
    try:
        cpu_before = resource.getrusage(resource.RUSAGE_THREAD)
        process_before = time.process_time()
        report = replay(dataset, bootstrap, settings, options)
        cpu_after = resource.getrusage(resource.RUSAGE_THREAD)
        main_cpu = ((cpu_after.ru_utime + cpu_after.ru_stime)
                    - (cpu_before.ru_utime + cpu_before.ru_stime))
        process_cpu = time.process_time() - process_before
    finally:
        admin = AdminClient({**settings.kafka.client_config(bootstrap), "log_level": 0})
        for future in admin.delete_topics(
                [options.transactions_topic, options.labels_topic]).values():
            try:
                future.result()
            except Exception:  # noqa: BLE001 - a topic left behind is not a result
                pass
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
        settings = dataclasses.replace(base, state_dir=Path(state))
        for labels in (True, False) if args.no_labels_run else (True,):
            results.append(run_once(dataset, bootstrap, settings, labels))

    report: dict[str, Any] = {"benchmark": "replay producer, --speed max", "bootstrap": bootstrap,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine(), "runs": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

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
