"""Benchmark: the whole factory on the full handbook dataset, with feature parity.

    python -m bench.stream_parity [--days 183] [--customers 5000] [--terminals 10000]
                                  [--keep-log DIR]

Runs the main job (``streams.jobs.job.run``) on its own fresh services (free ports, a
temporary state folder): 183 simulated days, 1,754,155 transactions and their labels
replayed in strict mode through a labels worker and a scoring worker; every scored
transaction's served features are compared with the batch reference. Writes
``bench/results/stream_parity.json`` (events/s of the feature-and-scoring stage, parity
rows, the per-stage seconds of the scoring worker, machine) and prints a table.
``--keep-log DIR`` copies the run's offline feature log to ``DIR`` before the temporary
folder is deleted (``bench.model_quality --feature-log DIR`` trains and tests on it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from bench.common import STACK_PORTS, command_line, isolated_settings, model_repository
from streams.jobs.job import JobSize, run
from streams.settings import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "results" / "stream_parity.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=183)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--terminals", type=int, default=10000)
    parser.add_argument("--keep-log", type=Path, metavar="DIR",
                        help="copy the run's feature log to DIR before the temporary "
                             "folder is deleted")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="stream-parity-"))
    # The run's state (Kafka log, feature log) takes gigabytes: removed however the
    # run ends.
    try:
        repo = model_repository(work / "triton_repo")
        settings = isolated_settings(work / "state", STACK_PORTS)
        size = JobSize(args.customers, args.terminals, args.days,
                       test_days=(args.days - 7, args.days))
        began = time.monotonic()
        summary = run(size, settings=settings, triton_repo=repo)
        result = {
            "benchmark": "stream_parity",
            "command": command_line("bench.stream_parity", argv),
            "size": dataclasses.asdict(size),
            "summary": dataclasses.asdict(summary),
            "total_wall_s": round(time.monotonic() - began, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2))
        print("\n| figure | value |\n|---|---|")
        print(f"| transactions | {summary.produced:,} |")
        print(f"| scored (distinct) | {summary.distinct:,} |")
        print(f"| duplicates | {summary.duplicates} |")
        print(f"| rows equal to the batch reference (1e-6) | {summary.parity_rows:,} |")
        print(f"| rows that differ | {summary.skew_rows} |")
        print(f"| replay-to-last-score wall s | {summary.wall_s:,.1f} |")
        print(f"| events/s (features + scoring, strict) | {summary.events_per_s:,.0f} |")
        print(f"\nwritten to {RESULTS.relative_to(REPO_ROOT)}")
        if args.keep_log is not None:
            logs = sorted((settings.state_dir / "runs").glob("*/feature_log"))
            if len(logs) != 1:
                raise SystemExit(f"expected one run's feature log, found {len(logs)}; "
                                 "nothing copied")
            shutil.copytree(logs[0], args.keep_log, dirs_exist_ok=True)
            print(f"feature log copied to {args.keep_log}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if summary.skew_rows == 0 and summary.distinct == summary.produced else 1


if __name__ == "__main__":
    raise SystemExit(main())
