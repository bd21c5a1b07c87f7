"""``factory bootstrap --parquet history.parquet``: a factory started from a team's own data.

1. The history (the replay's columns: ``TRANSACTION_ID``, ``TX_DATETIME``, ``CUSTOMER_ID``,
   ``TERMINAL_ID``, ``TX_AMOUNT``, ``TX_FRAUD``), cut at ``--until`` when given, gets the
   model features of every row from the batch reference (:mod:`models.reference_features`
   and :mod:`models.extra_features`: the definitions the stream computes, equal on every
   row), with labels ``--label-delay-days`` late as the stream sees them.
2. The first model is trained on it up to the last ``--test-days`` (validated on the
   days before them), published, registered as champion, loaded in Triton and routed.
3. The online store and the workers' tables are primed by the stream itself: a labels
   worker and a strict scoring worker with ``factory serve``'s groups replay the history
   at full speed, so their state (card windows, terminal label arrays, the Feast online
   store, the offsets) is exactly where the history ends, and ``factory serve`` continues
   from there. Labels known after the last historic transaction are not sent: they come
   at their time (``factory replay --from`` sends them for a continuation). Once the
   labels worker has applied the others, the label watermark moves to the history's
   end, so the strict scorer scores the history to its last transaction.
4. A report (``<state dir>/bootstrap/report.md`` and ``report.json``): the first model's
   quality on the test days, and the streamed features of the history against the batch
   reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streams.settings import Settings


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factory bootstrap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parquet", type=Path, required=True,
                   help="the history: TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, "
                        "TX_AMOUNT, TX_FRAUD, sorted by TX_DATETIME")
    p.add_argument("--until", default=None, metavar="TIME",
                   help="the history ends before this event time (default: the whole file)")
    p.add_argument("--label-delay-days", type=float, default=7.0,
                   help="days after a transaction its label is known (the stream's delay)")
    p.add_argument("--test-days", type=int, default=14,
                   help="last days of the history kept out of training, for the report")
    p.add_argument("--valid-days", type=int, default=7)
    p.add_argument("--repo", type=Path, default=Settings.from_env().triton_repo,
                   help="the Triton model repository (default: FACTORY_TRITON_REPO, else "
                        "triton_repo/)")
    p.add_argument("--seed", type=int, default=0)
    return p


def load_history(path: Path, until: str | None, label_delay_days: float) -> pd.DataFrame:
    """The history's rows before ``until``, with the simulator's derived time columns.

    Raises :class:`streams.replay.dataset.DatasetError` naming a column that cannot be used.
    """
    from streams.replay.dataset import LABEL_COLUMN, REQUIRED_COLUMNS, DatasetError, validate_frame

    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({exc})") from None
    validate_frame(frame, labels=True)
    if "LABEL_DELAY_DAYS" in frame.columns and not np.allclose(
            frame["LABEL_DELAY_DAYS"].to_numpy(np.float64), label_delay_days):
        raise DatasetError("column 'LABEL_DELAY_DAYS' varies or differs from "
                           "--label-delay-days: the batch reference assumes one delay")
    times = frame["TX_DATETIME"]
    if getattr(times.dtype, "tz", None) is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    frame = frame[[*REQUIRED_COLUMNS, LABEL_COLUMN]].assign(TX_DATETIME=times)
    if until is not None:
        frame = frame[frame["TX_DATETIME"] < pd.Timestamp(until)]
    if not len(frame):
        raise DatasetError(f"{path}: no transaction before {until}")
    origin = frame["TX_DATETIME"].iloc[0].normalize()
    seconds = ((frame["TX_DATETIME"] - origin) // pd.Timedelta(seconds=1)).astype(np.int64)
    return frame.assign(TX_TIME_SECONDS=seconds, TX_TIME_DAYS=seconds // 86400,
                        TX_FRAUD_SCENARIO=0).reset_index(drop=True)


def bootstrap(args: argparse.Namespace, settings: Settings) -> dict:
    """Run the steps of the module docstring; returns the report's figures."""
    from infra.local.manager import Stack
    from models.evaluation import assess
    from models.extra_features import MODEL_FEATURE_COLUMNS, SERVING_NAMES, add_model_features
    from models.feature_log import wait_for_feature_log
    from models.registry import Registry
    from models.trainer import train_version
    from streams.clients.feast_client import apply_repo
    from streams.clients.kafka_io import topic_end_offsets
    from streams.clients.router import ModelRouter
    from streams.dataplane.worker import WorkerProcess, role_defaults
    from streams.jobs.job import _wait_for_scores
    from streams.lifecycle.model_events import ModelEvents
    from streams.lifecycle.swap import (
        ModelSwapper,
        score_onnx,
        triton_loader,
        triton_ready_versions,
    )
    from streams.replay.dataset import Dataset
    from streams.replay.producer import ReplayOptions, replay
    from streams.topics import SCORES, kafka_layout

    began = time.monotonic()
    history = load_history(args.parquet, args.until, args.label_delay_days)
    days = int(history["TX_TIME_DAYS"].max()) + 1
    if days <= args.test_days + args.valid_days + 7:
        raise ValueError(f"the history holds {days} days: too few for --test-days "
                         f"{args.test_days}, --valid-days {args.valid_days} and a week of "
                         "training")
    log(f"history: {len(history):,} transactions over {days} days, "
        f"{int(history['TX_FRAUD'].sum()):,} frauds, {history['CUSTOMER_ID'].nunique():,} "
        f"cards, {history['TERMINAL_ID'].nunique():,} terminals")
    log("computing the model features of every transaction (the batch reference)")
    delay = int(round(args.label_delay_days))
    reference = add_model_features(history, delay_days=delay)

    stack = Stack(settings, kafka_layout(settings.partitions), triton_repo=args.repo)
    endpoints = stack.up()
    labels_group, labels_port = role_defaults("labels", settings)
    score_group, score_port = role_defaults("score", settings)
    _refuse_used_groups(endpoints.kafka, settings, [labels_group, score_group])

    registry = Registry(settings.model_registry_dir, repo_dir=args.repo)
    end = reference["TX_DATETIME"].iloc[0].normalize() + pd.Timedelta(days=days - args.test_days)
    log(f"training the first model on the days before {end.date()}")
    entry = train_version(reference[reference["TX_DATETIME"] < end], registry=registry,
                          repo_dir=args.repo, trigger="initial", valid_days=args.valid_days,
                          end=end, seed=args.seed, device="cpu")
    registry.set_champion(entry.version, "factory bootstrap: the first model of the history")
    router = ModelRouter(endpoints.redis)
    router.reset()
    ModelSwapper(load=triton_loader(endpoints.triton, args.repo),
                 ready=lambda: triton_ready_versions(endpoints.triton), router=router,
                 registry=registry, events=ModelEvents(None),
                 repo_dir=args.repo).ensure_serving(entry.version)
    router.close()
    names = [SERVING_NAMES[c] for c in MODEL_FEATURE_COLUMNS]
    test = reference[reference["TX_DATETIME"] >= end]
    onnx = args.repo / "fraud_detector" / str(entry.version) / "model.onnx"
    quality = assess(test, score_onnx(onnx, test[list(MODEL_FEATURE_COLUMNS)].to_numpy()))
    log(f"version {entry.version} serves; on the last {args.test_days} days: AUC ROC "
        f"{quality.auc_roc:.3f}, AP {quality.average_precision:.3f}, CP@100 "
        f"{quality.card_precision_at_k:.3f}")

    apply_repo(endpoints.redis)
    run_dir = settings.state_dir / "bootstrap"
    run_dir.mkdir(parents=True, exist_ok=True)
    feature_log = settings.state_dir / "feature_log"
    common: dict[str, Any] = {"env": {"FACTORY_STATE_DIR": str(settings.state_dir)},
                              "offset_reset": "latest"}
    workers = [
        WorkerProcess(settings, labels_group, role="labels", metrics_port=labels_port,
                      extra_args=["--batch-wait", "0.5", "--batch-max", "4096"],
                      log_path=str(run_dir / "labels-worker.log"), **common),
        WorkerProcess(settings, score_group, role="score", mode="strict",
                      labels_group=labels_group, feature_log=str(feature_log),
                      metrics_port=score_port, log_path=str(run_dir / "score-worker.log"),
                      **common),
    ]
    try:
        for worker in workers:
            worker.start(endpoints.kafka)
        start = topic_end_offsets(endpoints.kafka, settings, SCORES)
        log(f"priming the stream's state: replaying {len(history):,} transactions and the "
            "labels known by the end of the history")
        replay(Dataset.from_frame(history, default_delay_days=args.label_delay_days),
               endpoints.kafka, settings, ReplayOptions(flush_labels=False))
        last_time = int(history["TX_DATETIME"].iloc[-1].timestamp())
        _close_the_history(endpoints.kafka, endpoints.redis, settings, labels_group,
                           last_time)
        wanted = set(history["TRANSACTION_ID"].tolist())
        _wait_for_scores(endpoints.kafka, settings, start, wanted, workers)
    finally:
        for worker in workers:
            worker.stop(timeout_s=60.0)
    logged = wait_for_feature_log(feature_log, wanted).set_index("tx_id")
    expected = reference.set_index("TRANSACTION_ID").loc[logged.index]
    equal = np.isclose(logged[names].to_numpy(np.float64),
                       expected[list(MODEL_FEATURE_COLUMNS)].to_numpy(np.float64),
                       rtol=0, atol=1e-6).all(axis=1)
    figures = {
        "history": str(args.parquet), "until": args.until, "transactions": len(history),
        "days": days, "frauds": int(history["TX_FRAUD"].sum()),
        "first_day": str(history["TX_DATETIME"].iloc[0].date()),
        "last_time": str(history["TX_DATETIME"].iloc[-1]),
        "version": entry.version, "trained_before": str(end.date()),
        "validation": {k: entry.metrics[k] for k in
                       ("auc_roc", "average_precision", "card_precision_at_k")},
        "test_days": args.test_days,
        "test": {"auc_roc": round(quality.auc_roc, 4),
                 "average_precision": round(quality.average_precision, 4),
                 "card_precision_at_100": round(quality.card_precision_at_k, 4),
                 "transactions": len(test), "frauds": int(test["TX_FRAUD"].sum())},
        "streamed_rows": int(len(logged)), "rows_equal_to_reference": int(equal.sum()),
        "seconds": round(time.monotonic() - began, 1),
    }
    (run_dir / "report.json").write_text(json.dumps(figures, indent=2))
    (run_dir / "report.md").write_text(_report(figures))
    return figures


def _close_the_history(kafka: str, redis_url: str, settings: Settings, group: str,
                       last_time: int, timeout_s: float = 600.0) -> None:
    """Tell the scorer that every label known by ``last_time`` is applied.

    The replay sent every label known by the history's last transaction and none known
    later. Once the labels group has committed the end of ``labels`` (each label in
    Feast), the watermark's promise "every label known before T is applied" holds for
    T = ``last_time`` + 1 s on every partition, so a strict scorer scores the history to
    its end instead of waiting for the first label after it.
    """
    from streams.clients.kafka_io import committed_offsets, topic_end_offsets
    from streams.dataplane.watermark import LabelWatermark
    from streams.topics import LABELS

    ends = topic_end_offsets(kafka, settings, LABELS)
    deadline = time.monotonic() + timeout_s
    while committed_offsets(kafka, settings, group, LABELS) != ends:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the labels worker did not apply every label in "
                               f"{timeout_s:.0f} s")
        time.sleep(0.5)
    watermark = LabelWatermark(redis_url, group, settings.partitions)
    try:
        for partition in range(settings.partitions):
            watermark.advance(partition, float(last_time + 1))
    finally:
        watermark.close()


def _refuse_used_groups(kafka: str, settings: Settings, groups: list[str]) -> None:
    """Bootstrap primes a fresh factory; groups with committed offsets already hold state."""
    from streams.clients.kafka_io import committed_offsets
    from streams.topics import LABELS, TRANSACTIONS, ensure_topics

    ensure_topics(settings, kafka)
    for group, topic in zip(groups, (LABELS, TRANSACTIONS), strict=True):
        if any(committed_offsets(kafka, settings, group, topic).values()):
            raise RuntimeError(f"consumer group {group!r} already has state: bootstrap primes "
                               "a fresh factory (use a new FACTORY_STATE_DIR with its own "
                               "services)")


def _report(f: dict) -> str:
    v, t = f["validation"], f["test"]
    return (
        f"# Bootstrap of {f['history']}\n\n"
        f"- history: {f['transactions']:,} transactions over {f['days']} days from "
        f"{f['first_day']} to {f['last_time']}, {f['frauds']:,} frauds\n"
        f"- first model: version {f['version']}, trained on the days before "
        f"{f['trained_before']}\n\n"
        "| window | AUC ROC | AP | CP@100 |\n|---|---|---|---|\n"
        f"| validation (chose the epoch) | {v['auc_roc']:.3f} | {v['average_precision']:.3f}"
        f" | {v['card_precision_at_k']:.3f} |\n"
        f"| last {f['test_days']} days ({t['transactions']:,} transactions, {t['frauds']:,}"
        f" frauds, never trained on) | {t['auc_roc']:.3f} | {t['average_precision']:.3f} | "
        f"{t['card_precision_at_100']:.3f} |\n\n"
        f"- the stream's state primed by replaying the history: features of "
        f"{f['rows_equal_to_reference']:,} of {f['streamed_rows']:,} rows equal to the "
        "batch reference\n"
        f"- took {f['seconds']:.0f} s\n"
    )


def main(argv: list[str] | None = None) -> int:
    from infra.local.base import PrerequisiteError, ServiceError
    from streams.replay.dataset import DatasetError

    args = parser().parse_args(argv)
    try:
        figures = bootstrap(args, Settings.from_env())
    except (DatasetError, ValueError, PrerequisiteError, ServiceError, RuntimeError) as exc:
        print(f"factory bootstrap: {exc}", file=sys.stderr)
        return 2
    print(_report(figures))
    log(f"report: {Settings.from_env().state_dir / 'bootstrap' / 'report.md'}; "
        "'factory serve' continues from here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
