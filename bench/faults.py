"""The factory under the faults production brings, one at a time, under a steady load.

``python -m bench.faults`` starts a stack of its own (``factory up`` in a temporary state
folder, free ports), trains and promotes a first model, runs ``factory serve --mode
strict`` (so that every feature can be compared with the batch reference) and replays a
simulated world at a steady pace with malformed events mixed in (about 1 %: not JSON,
truncated, wrong types, huge numbers, unknown versions, empty and 1 MB payloads, invalid
UTF-8, keys that are not the card; and events with unknown fields, which are valid and
scored). Meanwhile, in turn: each worker is killed with ``kill -9`` three times at random
moments (``factory serve`` restarts it), the Kafka broker is killed with ``kill -9`` and
started again, Triton is restarted bare (nothing loaded), Redis is restarted empty, the
disk that holds the feature log fills up (a small tmpfs; skipped without the right to
mount one) and Alertmanager is stopped.

For each fault: the seconds until scoring caught up again (consumer lag back under two
seconds of load), the duplicate scores produced in its window, and the alerts Prometheus
had pending or firing. For the run: valid events lost (goal 0), duplicates at the sink,
rows whose features differ from the batch reference, and the dead letters: every bad
event once in ``transactions-dlq`` by its offset, with the reason expected of it.
``bench/results/faults.json`` holds it all; ``--quick`` is the smaller run of the test
suite (one fault of each kind but the disk).
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import command_line, log, machine_info, utc_date, write_report
from bench.fault_rig import (
    FaultRecord,
    Injected,
    Rig,
    Watch,
    fill_disk,
    inject,
    kill_worker,
    restart_kafka,
    restart_redis_empty,
    restart_triton,
    scrape,
    stop_alertmanager,
)
from streams.settings import REPO_ROOT, Settings

RESULT = REPO_ROOT / "bench" / "results" / "faults.json"
BAD_RATE = 0.01


# ---------------------------------------------------------------------------- the run

@dataclass
class Plan:
    customers: int = 600
    terminals: int = 1200
    days: int = 150
    rate: float = 300.0
    kills: int = 3
    disk: bool = True
    settle_s: float = 8.0
    seed: int = 0


QUICK = Plan(customers=300, terminals=600, days=40, rate=150.0, kills=1, disk=False,
             settle_s=4.0)


def faults_of(rig: Rig, plan: Plan) -> list[tuple[str, Callable[[], str]]]:
    faults: list[tuple[str, Callable[[], str]]] = []
    for i in range(plan.kills):
        faults.append((f"scoring worker kill -9 ({i + 1})", kill_worker(rig, "score")))
        faults.append((f"labels worker kill -9 ({i + 1})", kill_worker(rig, "labels")))
    faults += [("Kafka broker kill -9, restart", lambda: restart_kafka(rig)),
               ("Triton restart", lambda: restart_triton(rig)),
               ("Redis restart, empty", lambda: restart_redis_empty(rig))]
    if plan.disk and rig.tmpfs is not None:
        faults.append(("feature-log disk full", lambda: fill_disk(rig)))
    faults.append(("Alertmanager down", lambda: stop_alertmanager(rig)))
    return faults


def run(plan: Plan, tmp: Path) -> dict[str, Any]:
    """The whole fault run; returns the report."""
    from models.extra_features import add_model_features
    from models.simulator import simulate
    from streams.replay.dataset import Dataset
    from streams.replay.producer import ReplayOptions, replay

    rig = Rig(tmp)
    records: list[FaultRecord] = []
    try:
        log("starting a stack of its own")
        rig.factory("up")
        disk = plan.disk and rig.mount_feature_log_disk()
        log("training and promoting a first model")
        rig.factory("model", "train", "--customers", "200", "--terminals", "400",
                    "--days", "45", "--promote")
        serve = rig.start("serve", "serve", "--mode", "strict", "--no-retrainer",
                          "--status-every", "10")
        _wait_ready(rig, serve)
        frame = add_model_features(simulate(n_customers=plan.customers,
                                            n_terminals=plan.terminals, nb_days=plan.days))
        kafka = rig.endpoints["kafka"]
        speed = plan.rate * 86400 * plan.days / len(frame)
        log(f"replaying {len(frame):,} transactions at about {plan.rate:.0f}/s "
            f"({len(frame) / plan.rate:.0f} s), malformed events at {BAD_RATE:.0%}")
        replay_errors: list[BaseException] = []

        def produce() -> None:
            try:
                replay(Dataset.from_frame(frame), kafka, rig.settings,
                       ReplayOptions(progress=False, speed=speed))
            except BaseException as exc:  # noqa: BLE001 - reported with the results
                replay_errors.append(exc)

        producer = threading.Thread(target=produce, daemon=True)
        injected = Injected()
        stop_bad = threading.Event()
        bad = threading.Thread(target=inject, args=(kafka, rig.settings,
                                                    plan.rate * BAD_RATE, stop_bad, injected),
                               daemon=True)
        watch = Watch(rig)
        watch.thread.start()
        producer.start()
        bad.start()
        rng = random.Random(plan.seed)
        time.sleep(plan.settle_s * 2)
        faults = faults_of(rig, plan)
        for name, fault in faults:
            time.sleep(plan.settle_s * rng.uniform(0.5, 1.5))  # a random moment
            if not producer.is_alive():
                log(f"the load ended before '{name}': lengthen the run")
                break
            record = FaultRecord(name, started=time.time())
            log(f"fault: {name}")
            record.note = fault()
            record.cleared = time.time()
            recovered = watch.wait_recovered(record.cleared, plan.rate)
            record.recovered = recovered
            record.recovery_s = None if recovered is None else round(recovered
                                                                      - record.started, 1)
            log(f"  {record.note}; recovered in "
                f"{record.recovery_s if recovered else 'NOT RECOVERED'} s")
            records.append(record)
        producer.join()
        stop_bad.set()
        bad.join()
        end = time.time()
        log("the load is in; waiting for every score")
        report = _verify(rig, frame, injected, records, watch, end)
        watch.stop.set()
        report["plan"] = asdict(plan)
        report["disk_fault"] = bool(disk)
        report["replay_errors"] = [repr(e) for e in replay_errors]
        return report
    finally:
        rig.close()


def _wait_ready(rig: Rig, serve: subprocess.Popen[bytes]) -> None:
    deadline = time.time() + 180
    while not (scrape(rig.worker_port).get("factory_worker_ready") == 1.0
               and scrape(rig.worker_port + 1).get("factory_worker_ready") == 1.0):
        if serve.poll() is not None or time.time() > deadline:
            raise RuntimeError("factory serve did not get ready: "
                               + (rig.tmp / "serve.log").read_text()[-2000:])
        time.sleep(0.5)


def _read_to_end(kafka: str, settings: Settings, topic: str) -> list[Any]:
    from streams.clients.kafka_io import consume, topic_end_offsets

    ends = topic_end_offsets(kafka, settings, topic)
    total = sum(ends.values())
    return consume(kafka, settings, topic, timeout_s=300, progress=None,
                   until=lambda got: len(got) >= total)


def _verify(rig: Rig, frame: pd.DataFrame, injected: Injected, records: list[FaultRecord],
            watch: Watch, end: float) -> dict[str, Any]:
    from models.extra_features import MODEL_FEATURE_COLUMNS, SERVING_NAMES
    from models.feature_log import read_feature_log, wait_for_feature_log
    from streams.dataplane.deadletter import read_headers

    kafka, settings = rig.endpoints["kafka"], rig.settings
    valid = set(frame["TRANSACTION_ID"].tolist()) | injected.extra_valid
    deadline = time.time() + 600
    while True:
        scores = _read_to_end(kafka, settings, "scores")
        ids = [json.loads(m.value)["tx_id"] for m in scores]
        if valid <= set(ids) or time.time() > deadline:
            break
        log(f"  {len(valid - set(ids)):,} valid events not scored yet")
        time.sleep(5)
    counts = Counter(ids)
    lost = len(valid - set(counts))
    duplicates = sum(c - 1 for c in counts.values())
    # A fault's window: from its start until 10 s after it recovered, or the next fault.
    for record, after in zip(records, [*records[1:], None], strict=True):
        stop = (record.recovered or end) + 10
        if after is not None:
            stop = min(stop, after.started)
        record.window_end = stop
        record.alerts, record.signals = watch.seen(record.started, stop)
    # A duplicate belongs to the fault in whose window its second copy was produced.
    first_seen: set[int] = set()
    for message in scores:
        tx = json.loads(message.value)["tx_id"]
        if tx in first_seen:
            at = message.timestamp_ms / 1000
            for record in records:
                if record.started <= at <= record.window_end:
                    record.duplicates += 1
                    break
        first_seen.add(tx)

    # The rows of the last scores reach the feature log at the scorer's next checkpoint.
    root = rig.tmp / "state" / "feature_log"
    try:
        logged = wait_for_feature_log(root, set(frame["TRANSACTION_ID"].tolist()))
    except TimeoutError as missing:
        log(f"  {missing}")
        logged = read_feature_log(root)
    names = [SERVING_NAMES[c] for c in MODEL_FEATURE_COLUMNS]
    logged = logged[logged["tx_id"].isin(frame["TRANSACTION_ID"])]
    reference = frame.set_index("TRANSACTION_ID").loc[logged["tx_id"]]
    differ = ~np.isclose(logged[names].to_numpy(np.float64),
                         reference[MODEL_FEATURE_COLUMNS].to_numpy(np.float64),
                         rtol=0, atol=1e-6).all(axis=1)

    letters = _read_to_end(kafka, settings, "transactions-dlq")
    by_place: Counter[tuple[int, int]] = Counter()
    wrong_reason = 0
    for letter in letters:
        headers = read_headers(letter.headers)
        place = (int(headers["partition"]), int(headers["offset"]))
        by_place[place] += 1
        if place in injected.bad and headers.get("reason") != injected.bad[place]:
            wrong_reason += 1
    bad_missing = len(set(injected.bad) - set(by_place))
    return {
        "date": utc_date(), "machine": machine_info(),
        "command": command_line("bench.faults", None),
        "valid_events": len(valid), "valid_events_with_unknown_fields":
            len(injected.extra_valid),
        "lost": lost, "duplicates": duplicates,
        "feature_rows_checked": int(len(logged)),
        "feature_rows_distinct": int(logged["tx_id"].nunique()),
        "feature_rows_differing_from_batch_reference": int(differ.sum()),
        "bad_events": len(injected.bad), "bad_by_reason": dict(Counter(injected.bad.values())),
        "dead_letters": len(letters), "bad_events_missing_from_dlq": bad_missing,
        "bad_events_dead_lettered_more_than_once": sum(1 for p, c in by_place.items()
                                                       if p in injected.bad and c > 1),
        "dead_letters_with_a_wrong_reason": wrong_reason,
        "dead_letters_not_injected": sum(c for p, c in by_place.items()
                                         if p not in injected.bad),
        "injection_errors": injected.errors[:5],
        "faults": [asdict(r) for r in records],
    }


def table(report: dict[str, Any]) -> str:
    """The fault table as Markdown."""
    lines = ["| fault | held | caught up after | duplicate scores | alerts that went pending "
             "or firing | the factory's own signals |", "|---|---|---|---|---|---|"]
    for r in report["faults"]:
        recovered = "**not recovered**" if r["recovery_s"] is None else f"{r['recovery_s']} s"
        lines.append(f"| {r['fault']} | {r['cleared'] - r['started']:.1f} s | {recovered} | "
                     f"{r['duplicates']} | {', '.join(r['alerts']) or 'none'} | "
                     f"{', '.join(r['signals']) or '-'} |")
    lines.append(
        f"| **whole run** | | {report['valid_events']:,} valid events, **{report['lost']} "
        f"lost** | {report['duplicates']} | {report['bad_events']} bad events: "
        f"{report['bad_events_missing_from_dlq']} missing from the DLQ, "
        f"{report['bad_events_dead_lettered_more_than_once']} twice, "
        f"{report['dead_letters_with_a_wrong_reason']} with a wrong reason | "
        f"{report['feature_rows_differing_from_batch_reference']} of "
        f"{report['feature_rows_distinct']:,} rows differ from the batch reference |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="the small run of the test suite: one fault of each kind, no disk")
    p.add_argument("--out", type=Path, default=RESULT)
    p.add_argument("--rate", type=float, default=None, help="events a second")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else Plan()

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt  # the stack is stopped on the way out

    signal.signal(signal.SIGTERM, interrupted)
    if args.rate:
        plan.rate = args.rate
    with tempfile.TemporaryDirectory(prefix="factory-faults-") as tmp:
        report = run(plan, Path(tmp))
    write_report(args.out, report)
    print(table(report))
    print(f"\nwritten to {args.out}")
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
