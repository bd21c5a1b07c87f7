"""The main job: the factory end to end on simulated card traffic.

Starts the local services (those not given by settings), resets and applies the Feast
repository, simulates card traffic with the handbook's simulator, trains and publishes a
first model on the batch reference features of the early weeks when the Triton
repository has none (:mod:`models.recipe` on the handbook's features and the
stream-exact extras), loads it, starts a labels worker and a scoring worker in strict
replay mode, replays every transaction and its delayed label on event time, waits until
every transaction is scored, and prints a summary: throughput, latency, duplicates,
training-serving skew (the streamed features against the batch reference), and the
quality of the streamed scores on the last week. Then it stops what it started.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from infra.local.manager import Stack
from models.feature_log import wait_for_feature_log
from streams.clients.feast_client import apply_repo, open_store
from streams.clients.kafka_io import Received, consume, topic_end_offsets
from streams.clients.router import ModelRouter
from streams.clients.triton_models import TRITON_REPO, load_model, published_versions
from streams.dataplane.worker import WorkerProcess, replay_workers
from streams.records import Score
from streams.settings import Settings
from streams.topics import SCORES, kafka_layout


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class JobSize:
    """The simulated world of one run, and the days the first model learns from."""

    customers: int = 500
    terminals: int = 1000
    days: int = 45
    train_days: tuple[int, int] = (14, 28)
    valid_days: tuple[int, int] = (28, 31)
    test_days: tuple[int, int] = (38, 45)


def ensure_first_model(repo: Path, reference: pd.DataFrame, size: JobSize, seed: int = 0) -> int:
    """Publish version 1, trained on the batch features, when no version exists yet.

    The model is :mod:`models.recipe`'s on :data:`models.extra_features.MODEL_FEATURE_COLUMNS`,
    trained on ``size.train_days`` and stopped early on ``size.valid_days``. An existing
    latest version is checked against the model contract (``config.pbtxt``) first.
    """
    from models.export import check_onnx
    from models.triton_config import read_model_config

    versions = published_versions(repo)
    if versions:
        latest = repo / "fraud_detector" / str(versions[-1]) / "model.onnx"
        try:
            check_onnx(latest, read_model_config(repo / "fraud_detector" / "config.pbtxt"))
        except ValueError as exc:
            raise RuntimeError(f"{exc}; remove that version or publish one that fits") from exc
        return versions[-1]
    from models.export import publish_version
    from models.recipe import fit_fraud_model

    days = reference["TX_TIME_DAYS"].to_numpy()
    train = reference[(days >= size.train_days[0]) & (days < size.train_days[1])]
    valid = reference[(days >= size.valid_days[0]) & (days < size.valid_days[1])]
    log(f"training model v1 on days {size.train_days[0]}-{size.train_days[1] - 1} "
        f"({len(train):,} transactions)")
    model = fit_fraud_model(train, valid, seed=seed)
    publish_version(model, repo, 1)
    return 1


def reset_online_store(redis_url: str) -> None:
    """Empty the project's online store and apply the repository again (a fresh run)."""
    apply_repo(redis_url)
    open_store(redis_url).teardown()
    apply_repo(redis_url)


@dataclass
class Summary:
    produced: int
    scored: int
    distinct: int
    duplicates: int
    wall_s: float
    events_per_s: float
    p50_ms: float
    p99_ms: float
    decisions: dict[str, int]
    model_versions: list[int]
    skew_rows: int
    parity_rows: int
    test_auc_roc: float
    test_average_precision: float
    test_card_precision_at_100: float
    stage_seconds: dict[str, float] | None = None

    def print(self) -> None:
        print(json.dumps(asdict(self), indent=2))
        print(f"\nscored {self.distinct:,} of {self.produced:,} transactions "
              f"({self.duplicates} duplicates) in {self.wall_s:.1f} s = "
              f"{self.events_per_s:,.0f} events/s; latency p50 {self.p50_ms:.0f} ms, "
              f"p99 {self.p99_ms:.0f} ms (strict replay: includes waiting for labels)\n"
              f"features equal to the batch reference on {self.parity_rows:,} of "
              f"{self.distinct:,} rows ({self.skew_rows} differ)\n"
              f"last-week quality of the streamed scores: AUC ROC "
              f"{self.test_auc_roc:.3f}, AP {self.test_average_precision:.3f}, "
              f"CP@100 {self.test_card_precision_at_100:.3f}; model versions "
              f"{self.model_versions}")


def _wait_for_scores(kafka: str, settings: Settings, start: dict[int, int], wanted: set[int],
                     workers: list[WorkerProcess]) -> list[Received]:
    seen: set[int] = set()
    checked = 0

    def done(received: list[Received]) -> bool:
        nonlocal checked
        if not all(w.alive() for w in workers):
            raise SystemExit(f"a worker stopped; see {settings.state_dir}/*.log")
        for message in received[checked:]:
            seen.add(json.loads(message.value)["tx_id"])
        checked = len(received)
        return wanted <= seen

    # A full-size strict replay runs for an hour on a small machine: allow 10 ms an event.
    return consume(kafka, settings, SCORES, until=done, start=start,
                   timeout_s=max(1800.0, 0.01 * len(wanted)), progress="scores")


def summarise(frame: pd.DataFrame, scores: list[Score], feature_log: Path, wall: float,
              size: JobSize) -> Summary:
    from models.evaluation import assess
    from models.extra_features import MODEL_FEATURE_COLUMNS, SERVING_NAMES

    distinct = {s.tx_id: s for s in scores}
    latencies = np.array([s.latency_ms for s in distinct.values()])
    decisions: dict[str, int] = {}
    for s in distinct.values():
        decisions[s.decision] = decisions.get(s.decision, 0) + 1
    logged = wait_for_feature_log(feature_log, set(distinct)).set_index("tx_id")
    reference = frame.set_index("TRANSACTION_ID").loc[logged.index]
    names = [SERVING_NAMES[c] for c in MODEL_FEATURE_COLUMNS]
    equal = np.isclose(logged[names].to_numpy(np.float64),
                       reference[MODEL_FEATURE_COLUMNS].to_numpy(np.float64), rtol=0,
                       atol=1e-6).all(axis=1)
    days = frame["TX_TIME_DAYS"].to_numpy()
    test = frame[(days >= size.test_days[0]) & (days < size.test_days[1])]
    missing = len(set(frame["TRANSACTION_ID"].tolist()) - distinct.keys())
    if missing:
        raise RuntimeError(f"{missing:,} transactions were not scored before the wait ended")
    quality = assess(test, np.array([distinct[t].score for t in test["TRANSACTION_ID"]]))
    return Summary(
        produced=len(frame), scored=len(scores), distinct=len(distinct),
        duplicates=len(scores) - len(distinct), wall_s=round(wall, 2),
        events_per_s=round(len(distinct) / wall, 1),
        p50_ms=float(np.percentile(latencies, 50)), p99_ms=float(np.percentile(latencies, 99)),
        decisions=decisions, model_versions=sorted({s.model_version for s in scores}),
        skew_rows=int((~equal).sum()), parity_rows=int(equal.sum()),
        test_auc_roc=round(quality.auc_roc, 4),
        test_average_precision=round(quality.average_precision, 4),
        test_card_precision_at_100=round(quality.card_precision_at_k, 4),
    )


def stage_seconds(workers: list[WorkerProcess]) -> dict[str, float]:
    """Seconds each worker spent in each stage (``factory_stage_seconds``), by stage."""
    prefix = 'factory_stage_seconds_total{stage="'
    return {
        f"{worker.role}:{name[len(prefix):-2]}": round(value, 3)
        for worker in workers
        for name, value in worker.metrics().items()
        if name.startswith(prefix)
    }


def run(size: JobSize | None = None, keep_up: bool = False, settings: Settings | None = None,
        triton_repo: Path = TRITON_REPO) -> Summary:
    """Run the factory end to end once and return its summary."""
    from models.extra_features import add_model_features
    from models.simulator import simulate
    from streams.replay.dataset import Dataset
    from streams.replay.producer import ReplayOptions, replay

    size = size or JobSize()
    settings = settings or Settings.from_env()
    stack = Stack(settings, kafka_layout(settings.partitions), triton_repo=triton_repo)
    already = {name for name, state in stack.status().items() if state == "up"}
    log("starting services")
    endpoints = stack.up()
    workers: list[WorkerProcess] = []
    try:
        log("resetting the Feast online store and applying feature_repo/")
        reset_online_store(endpoints.redis)
        log(f"simulating {size.days} days of {size.customers:,} cards and "
            f"{size.terminals:,} terminals")
        frame = add_model_features(simulate(
            n_customers=size.customers, n_terminals=size.terminals, nb_days=size.days))
        version = ensure_first_model(triton_repo, frame, size)
        log(f"loading fraud_detector version {version} into Triton")
        load_model(endpoints.triton, [version], repo=triton_repo)
        router = ModelRouter(endpoints.redis)
        router.reset()
        router.promote(version)
        router.close()

        run_id = uuid.uuid4().hex[:8]
        run_dir = settings.state_dir / "runs" / run_id
        run_dir.mkdir(parents=True)
        # Fresh transaction ids per run, so that earlier runs never count here.
        frame["TRANSACTION_ID"] = (int(time.time()) % 10**8) * 10**7 + np.arange(len(frame))
        workers = replay_workers(settings, f"factory-{run_id}", run_dir)
        log(f"starting a labels worker and a scoring worker (run {run_id}, strict replay)")
        for worker in workers:
            worker.start(endpoints.kafka)
        start = topic_end_offsets(endpoints.kafka, settings, SCORES)
        log(f"replaying {len(frame):,} transactions and their labels on event time")
        began = time.monotonic()
        replay(Dataset.from_frame(frame), endpoints.kafka, settings, ReplayOptions())
        received = _wait_for_scores(endpoints.kafka, settings, start,
                                    set(frame["TRANSACTION_ID"].tolist()), workers)
        wall = time.monotonic() - began
        wanted = set(frame["TRANSACTION_ID"].tolist())
        scores = [s for s in (Score.parse(m.value) for m in received) if s.tx_id in wanted]
        summary = summarise(frame, scores, run_dir / "feature_log", wall, size)
        summary.stage_seconds = stage_seconds(workers)
        summary.print()
        (run_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
        log(f"run folder: {run_dir}")
        return summary
    finally:
        for worker in workers:
            worker.stop()
        if not keep_up:
            stack.down([n for n in stack.services if n not in already])
