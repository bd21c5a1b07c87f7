"""Benchmark of the pass-through baseline: consume, then produce, doing no work.

    python -m bench.passthrough [--events N] [--batch N] [--bootstrap HOST:PORT] [--quick]

The ceiling a Python Kafka worker can reach on this broker before it does anything: a
plain confluent-kafka loop that reads micro-batches with ``Consumer.consume`` and hands
every value, untouched, to ``Producer.produce``. An input topic is pre-filled with
``--events`` transactions in the factory's own encoding (``streams/replay/dataset.py``: the bytes
the scoring worker reads, keyed by card), with as many partitions as the factory's
topics; each mode then reads all of it with a fresh consumer group from the earliest
offset into a fresh output topic, committing offsets every ``--commit-every`` events
and at the end:

* ``free``: flush the producer only at the end, the upper bound;
* ``flush-per-batch``: flush after every micro-batch before going on, the delivery
  discipline of the factory's worker (a batch's outputs are acknowledged before its
  offsets may be committed).

The rate is events per wall second from the first message received to the final flush
and commit (the group join before it is reported on its own); CPU seconds are this
process's (the Python loop and librdkafka's threads) and, when the benchmark started
the broker itself, the broker's. Every output topic is checked to hold exactly the
events read. Writes ``bench/results/passthrough.json`` and prints a table.

Without ``--bootstrap`` (or ``KAFKA_BOOTSTRAP_SERVERS``) a Kafka broker of the local
stack is started on free ports with its state in a temporary folder, and stopped at the
end, so that services already running on the default ports are not disturbed. The
benchmark's topics are deleted afterwards.
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
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from bench.common import (
    KAFKA_PORTS,
    delete_topics,
    group_cpu_seconds,
    isolated_settings,
    kafka_versions,
    machine_info,
    thread_cpu_seconds,
    utc_date,
    write_report,
)
from infra.local.manager import Stack
from streams.replay.dataset import Dataset
from streams.settings import REPO_ROOT, Settings
from streams.topics import kafka_layout

RESULTS = REPO_ROOT / "bench" / "results" / "passthrough.json"
MODES = ("free", "flush-per-batch")
CHUNK = 50_000


def synthetic_transactions(n: int, seed: int = 0) -> Dataset:
    """``n`` transactions over 183 days, 5,000 cards and 10,000 terminals (the handbook's
    full-size world), in event-time order; amounts as the simulator draws them."""
    rng = np.random.default_rng(seed)
    start = 1_522_540_800  # 2018-04-01, the handbook's first day
    return Dataset(
        tx_id=np.arange(n, dtype=np.int64),
        event_time=np.sort(start + rng.integers(0, 183 * 86_400, n)).astype(np.int64),
        card_id=rng.integers(0, 5_000, n).astype(np.int64),
        terminal_id=rng.integers(0, 10_000, n).astype(np.int64),
        amount=np.round(np.abs(rng.normal(55.0, 30.0, n)) + 0.01, 2),
        is_fraud=None,
        delay_s=np.zeros(n, dtype=np.int64),
    )


def create_topics(admin: AdminClient, names: list[str], partitions: int) -> None:
    new = [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
    for name, future in admin.create_topics(new, operation_timeout=10).items():
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001
            raise RuntimeError(f"creating topic {name!r} failed: {exc}") from exc


def topic_messages(client: Consumer, topic: str) -> int:
    """Messages in ``topic``: the sum over its partitions of high minus low watermark."""
    partitions = client.list_topics(topic, timeout=10).topics[topic].partitions
    total = 0
    for p in partitions:
        low, high = client.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        total += high - low
    return total


def prefill(config: dict[str, str], topic: str, n: int) -> tuple[float, int]:
    """Produce ``n`` transactions into ``topic``; returns seconds and total value bytes."""
    # Warnings only (a fresh broker answers "coordinator load in progress" at first).
    producer = Producer({**config, "linger.ms": 20, "enable.idempotence": True,
                         "queue.buffering.max.messages": 1_000_000, "log_level": 3})
    data = synthetic_transactions(n)
    began, value_bytes = time.perf_counter(), 0
    for start in range(0, n, CHUNK):
        keys, values = data.encode_transactions(start, min(n, start + CHUNK))
        for key, value in zip(keys, values, strict=True):
            value_bytes += len(value)
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        print(f"  pre-fill: {min(n, start + CHUNK):,} of {n:,}", file=sys.stderr, flush=True)
    if producer.flush(120) != 0:
        raise RuntimeError("Kafka did not acknowledge the pre-fill within 120 s")
    return time.perf_counter() - began, value_bytes


def run_once(config: dict[str, str], source: str, sink: str, n: int, mode: str,
             args: argparse.Namespace, broker_pgid: int | None) -> dict[str, Any]:
    """Read ``n`` events of ``source`` into ``sink`` with a fresh group; the figures."""
    consumer = Consumer({**config, "group.id": f"bench-passthrough-{uuid.uuid4().hex[:8]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    producer = Producer({**config, "linger.ms": args.linger_ms, "enable.idempotence": True})
    produce, consume = producer.produce, consumer.consume
    flush_each = mode == "flush-per-batch"
    joined = time.perf_counter()
    consumer.subscribe([source])
    consumed = batches = commits = 0
    last_commit, first = 0, None
    cpu0 = thread0 = broker0 = 0.0
    deadline = time.monotonic() + args.idle_timeout
    while consumed < n:
        messages = consume(num_messages=args.batch, timeout=args.timeout)
        if not messages:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode}: no message for {args.idle_timeout} s after "
                                   f"{consumed:,} of {n:,}")
            continue
        if first is None:
            first = time.perf_counter()
            cpu0, broker0 = time.process_time(), group_cpu_seconds(broker_pgid) or 0.0
            thread0 = thread_cpu_seconds()
        for message in messages:
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"{mode}: consume failed: {message.error()}")
            while True:
                try:
                    produce(sink, message.value(), message.key())
                    break
                except BufferError:
                    producer.poll(0.01)
        consumed += len(messages)
        batches += 1
        if flush_each:
            producer.flush(30)
        else:
            producer.poll(0)
        if consumed - last_commit >= args.commit_every:
            consumer.commit(asynchronous=True)
            commits, last_commit = commits + 1, consumed
        deadline = time.monotonic() + args.idle_timeout
        if batches % 200 == 0:
            print(f"  {mode}: {consumed:,} of {n:,}", file=sys.stderr, flush=True)
    if producer.flush(60) != 0:
        raise RuntimeError(f"{mode}: Kafka did not acknowledge every output within 60 s")
    consumer.commit(asynchronous=False)
    commits += 1
    ended = time.perf_counter()
    cpu, thread = time.process_time() - cpu0, thread_cpu_seconds() - thread0
    broker = group_cpu_seconds(broker_pgid)
    written = topic_messages(consumer, sink)
    consumer.close()
    assert first is not None
    wall = ended - first
    return {
        "mode": mode,
        "events": consumed,
        "output_messages": written,
        "group_join_s": round(first - joined, 3),
        "wall_s": round(wall, 3),
        "events_per_s": round(consumed / wall),
        "process_cpu_s": round(cpu, 3),
        "main_thread_cpu_s": round(thread, 3),
        "events_per_process_cpu_s": round(consumed / cpu) if cpu else None,
        "broker_cpu_s": round(broker - broker0, 3) if broker is not None else None,
        "batches": batches,
        "mean_batch": round(consumed / batches, 1),
        "commits": commits,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.passthrough", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000, help="events pre-filled")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--batch", type=int, default=1024,
                        help="consume(num_messages=...), the worker's live batch_max")
    parser.add_argument("--timeout", type=float, default=0.05,
                        help="consume(timeout=...) in seconds, the worker's live batch_wait")
    parser.add_argument("--linger-ms", type=float, default=5.0,
                        help="producer linger.ms (the worker's)")
    parser.add_argument("--commit-every", type=int, default=2000,
                        help="commit offsets every N events (the worker's broker_commit_every)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of both topics (default: the settings', as the "
                             "factory's topics)")
    parser.add_argument("--idle-timeout", type=float, default=30.0,
                        help="give up after this many seconds without a message")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: start a broker)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each mode, each with a fresh group and output topic")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run: 20,000 events, one run a mode")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeats = min(args.events, 20_000), 1
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {', '.join(MODES)}")

    base = Settings.from_env()
    partitions = args.partitions or base.partitions
    bootstrap = args.bootstrap or base.kafka.bootstrap_servers
    with tempfile.TemporaryDirectory(prefix="bench-passthrough-") as state:
        stack = None
        try:
            if bootstrap is None:
                settings = isolated_settings(Path(state), KAFKA_PORTS, base=base)
                stack = Stack(settings, kafka_layout(settings.partitions))
                print("starting a Kafka broker ...", file=sys.stderr, flush=True)
                bootstrap = stack.up(["kafka"], echo=False).kafka
            broker_pgid = stack.services["kafka"].pid() if stack is not None else None
            report = measure(base, bootstrap, partitions, modes, args, broker_pgid)
        finally:
            if stack is not None:
                stack.down(["kafka"], echo=False)

    write_report(args.output, report)
    print_table(report, args.output)
    bad = [r["mode"] for r in report["runs"] if r["output_messages"] != r["events"]]
    if bad:
        print(f"output topics do not hold exactly the events read: {bad}", file=sys.stderr)
    return 1 if bad else 0


def measure(settings: Settings, bootstrap: str, partitions: int, modes: list[str],
            args: argparse.Namespace, broker_pgid: int | None) -> dict[str, Any]:
    """Pre-fill the input topic, run every mode, delete the topics; the report."""
    config = settings.kafka.client_config(bootstrap)
    admin = AdminClient({**config, "log_level": 0})
    tag = uuid.uuid4().hex[:8]
    source = f"bench-passthrough-in-{tag}"
    # Modes alternate, so that a slow phase of a shared host does not hit one mode only.
    plan = [(repeat, mode) for repeat in range(1, args.repeats + 1) for mode in modes]
    sinks = {key: f"bench-passthrough-out-{key[1]}-{key[0]}-{tag}" for key in plan}
    create_topics(admin, [source, *sinks.values()], partitions)
    try:
        fill_s, value_bytes = prefill(config, source, args.events)
        runs = []
        for repeat, mode in plan:
            run = run_once(config, source, sinks[repeat, mode], args.events, mode, args,
                           broker_pgid)
            runs.append({"repeat": repeat, **run})
            print(f"  {mode} #{repeat}: {run['events_per_s']:,} events/s", file=sys.stderr,
                  flush=True)
    finally:
        delete_topics(admin, [source, *sinks.values()])
    return {
        "benchmark": "pass-through: confluent-kafka consume then produce, no work",
        "bootstrap": bootstrap,
        "broker": "started by the benchmark" if broker_pgid is not None else "external",
        "date": utc_date(),
        "quick": args.quick,
        "settings": {
            "events": args.events, "partitions": partitions,
            "mean_value_bytes": round(value_bytes / args.events, 1) if args.events else 0,
            "consume_num_messages": args.batch, "consume_timeout_s": args.timeout,
            "linger_ms": args.linger_ms, "enable_idempotence": True,
            "commit_every_events": args.commit_every, "auto_offset_reset": "earliest",
            "enable_auto_commit": False,
        },
        "prefill_s": round(fill_s, 3),
        "machine": machine_info(**kafka_versions()),
        "runs": runs,
    }


def print_table(report: dict[str, Any], output: Path) -> None:
    print("| mode | run | events | events/s | wall s | group join s | process CPU s | "
          "main thread CPU s | events/CPU-s | broker CPU s | mean batch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in report["runs"]:
        broker = "-" if r["broker_cpu_s"] is None else f"{r['broker_cpu_s']:.2f}"
        print(f"| {r['mode']} | {r['repeat']} | {r['events']:,} | {r['events_per_s']:,} | "
              f"{r['wall_s']:.2f} | "
              f"{r['group_join_s']:.2f} | {r['process_cpu_s']:.2f} | "
              f"{r['main_thread_cpu_s']:.2f} | {r['events_per_process_cpu_s'] or 0:,} | "
              f"{broker} | {r['mean_batch']:,.0f} |")
    s, info = report["settings"], report["machine"]
    print(f"\n{s['partitions']} partitions, {s['mean_value_bytes']:.0f}-byte values, "
          f"consume({s['consume_num_messages']}, {s['consume_timeout_s']} s), "
          f"linger.ms {s['linger_ms']}, idempotent, commit every {s['commit_every_events']:,}; "
          f"{info['cpu']} ({info['cpus']} CPUs, load {info['load_average_1m']}), "
          f"librdkafka {info['librdkafka']}; results in {output}")


if __name__ == "__main__":
    sys.exit(main())
