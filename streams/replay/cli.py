"""The ``factory replay`` command: its options, the dataset they name, and a clean stop.

The command line picks a dataset (a parquet file, or a simulation with optional drift
scenarios) and the Kafka to replay it to (``--bootstrap``, the settings, else the local
stack's endpoints), then runs :func:`streams.replay.producer.replay`. The first Ctrl-C (or
SIGTERM) stops at the next chunk with a checkpoint that ``--resume`` continues from.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pandas as pd

from streams.replay.dataset import (
    DELAY_COLUMN,
    LABEL_COLUMN,
    REQUIRED_COLUMNS,
    Dataset,
    DatasetError,
)
from streams.replay.producer import ReplayOptions, ensure_replay_topics, replay
from streams.settings import Settings
from streams.topics import LABELS, TRANSACTIONS


class UsageError(ValueError):
    """A command line or environment that does not say what to replay, or where."""


def resolve_bootstrap(explicit: str | None, settings: Settings) -> str:
    """``--bootstrap``, else ``KAFKA_BOOTSTRAP_SERVERS``, else the local stack's endpoints."""
    if explicit:
        return explicit
    if settings.kafka.bootstrap_servers:
        return settings.kafka.bootstrap_servers
    from infra.local.manager import Endpoints

    path = settings.state_dir / "endpoints.json"
    if path.exists():
        return Endpoints.load(path).kafka
    raise UsageError("no Kafka to replay to: pass --bootstrap, set KAFKA_BOOTSTRAP_SERVERS "
                     "or start the local stack (factory up kafka)")


def load_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset the command line names: a parquet file or a (drifted) simulation."""
    labels = not args.no_labels
    if args.parquet is not None:
        import pyarrow.parquet as pq

        if args.drift:
            raise UsageError("--drift applies to --simulate only")
        path = Path(args.parquet)
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        try:
            names = pq.read_schema(path).names
            wanted = [*REQUIRED_COLUMNS, LABEL_COLUMN, DELAY_COLUMN]
            frame = pd.read_parquet(path, columns=[c for c in wanted if c in names])
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: not a readable parquet file ({exc})") from None
        return Dataset.from_frame(frame, labels, args.label_delay_days)
    from models.drift import apply_drift
    from models.drift_spec import DriftSpec
    from models.simulator import simulate

    try:
        specs = [DriftSpec.parse(text) for text in args.drift]
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--drift: {exc}") from None
    frame = simulate(n_customers=args.customers, n_terminals=args.terminals,
                     nb_days=args.days, start_date=args.start_date,
                     seed_customers=args.seed, seed_terminals=args.seed + 1)
    return Dataset.from_frame(apply_drift(frame, specs, seed=args.seed), labels,
                              args.label_delay_days)


CLI_DESCRIPTION = """\
Replay a dataset into Kafka in event-time order: each transaction to `transactions`
(key: card id), each label to `labels` (key: terminal id) once the replay clock passes
its known_at = event_time + delay. Stops cleanly on Ctrl-C; --resume continues."""


CLI_EXAMPLES = """\
examples:
  factory replay --simulate --customers 1000 --terminals 2000 --days 60
  factory replay --simulate --drift card_testing:start=120,days=30,intensity=10
  factory replay --parquet transactions.parquet --speed 3600 --resume"""


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError("speed must be 'max' or a positive number")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="factory replay", description=CLI_DESCRIPTION, epilog=CLI_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--simulate", action="store_true",
                        help="replay a simulated dataset (the default)")
    source.add_argument("--parquet", metavar="PATH", help="replay a parquet file with the "
                        "handbook's columns (TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, "
                        "TERMINAL_ID, TX_AMOUNT, TX_FRAUD; optional LABEL_DELAY_DAYS)")
    sim = p.add_argument_group("simulation")
    sim.add_argument("--customers", type=int, default=5000)
    sim.add_argument("--terminals", type=int, default=10000)
    sim.add_argument("--days", type=int, default=183)
    sim.add_argument("--start-date", default="2018-04-01")
    sim.add_argument("--seed", type=int, default=0, help="customer profiles seed (terminals "
                     "use seed+1, as the handbook's 0/1) and drift seed")
    sim.add_argument("--drift", action="append", default=[], metavar="SPEC",
                     help="a drift scenario, e.g. card_testing:start=120,days=30,intensity=10 "
                     "(kinds: card_testing, spending_shift, label_delay; repeatable)")
    p.add_argument("--speed", type=_speed, default=None, metavar="max|N",
                   help="'max' (default) or N times real time, paced on event time")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="stop after N transactions (continue later with --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint of this dataset")
    p.add_argument("--from", dest="start", metavar="TIME", default=None,
                   help="start at this event time (e.g. 2018-06-01): earlier transactions "
                        "are not sent, their labels due after the last of them are (the "
                        "continuation of a 'factory bootstrap --until TIME')")
    p.add_argument("--no-labels", action="store_true", help="produce transactions only")
    p.add_argument("--flush-labels", action=argparse.BooleanOptionalAction, default=True,
                   help="at the end of the dataset, produce the labels not yet due")
    p.add_argument("--label-delay-days", type=float, default=7.0,
                   help="label delay when the data has no LABEL_DELAY_DAYS column")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: settings, then "
                   "the local stack's endpoints.json)")
    p.add_argument("--transactions-topic", default=TRANSACTIONS)
    p.add_argument("--labels-topic", default=LABELS)
    p.add_argument("--quiet", action="store_true", help="no progress line")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``factory replay``; returns the exit status.

    The first Ctrl-C (or SIGTERM) stops the replay cleanly at the next chunk, with a
    checkpoint that ``--resume`` continues from exactly; a second one aborts.
    """
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    try:
        if args.limit is not None and args.limit < 0:
            raise UsageError("--limit must be >= 0")
        if args.start is not None and args.resume:
            raise UsageError("--from and --resume exclude each other")
        start_time = None
        if args.start is not None:
            try:
                start_time = int(pd.Timestamp(args.start, tz="UTC").timestamp())
            except ValueError:
                raise UsageError(f"--from: not a time: {args.start!r}") from None
        dataset = load_dataset(args)
        bootstrap = resolve_bootstrap(args.bootstrap, settings)
    except (DatasetError, UsageError) as exc:
        print(f"factory replay: {exc}", file=sys.stderr)
        return 2
    options = ReplayOptions(
        speed=args.speed, limit=args.limit, labels=not args.no_labels,
        flush_labels=args.flush_labels, resume=args.resume, start_time=start_time,
        transactions_topic=args.transactions_topic, labels_topic=args.labels_topic,
        progress=not args.quiet)
    stop = threading.Event()
    previous = _on_stop_signals(stop)
    try:
        ensure_replay_topics(settings, bootstrap,
                             [options.transactions_topic, options.labels_topic])
        report = replay(dataset, bootstrap, settings, options, stop=stop.is_set)
    except KeyboardInterrupt:
        print("factory replay: aborted; --resume continues from the last checkpoint",
              file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"factory replay: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"replayed rows {report.start_row:,}..{report.next_row:,} of {report.rows:,} "
          f"({report.sent:,} transactions, {report.labels_sent:,} labels) in "
          f"{report.wall_s:.1f} s = {report.events_per_s:,.0f} transactions/s"
          + ("" if report.finished else "; continue with --resume"), file=sys.stderr)
    return 130 if stop.is_set() else 0


def _on_stop_signals(stop: threading.Event) -> dict[int, Any]:
    """Make SIGINT and SIGTERM set ``stop`` once, then abort; returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def request_stop(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nfactory replay: stopping after this chunk (again to abort)", file=sys.stderr)

    return {signum: signal.signal(signum, request_stop)
            for signum in (signal.SIGINT, signal.SIGTERM)}


if __name__ == "__main__":
    sys.exit(main())
