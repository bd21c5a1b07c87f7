"""The main job: the factory end to end on simulated card traffic.

Starts the local services (those not given by settings), applies the Feast repository,
trains and publishes a first model when the Triton repository has none, loads it,
starts a stream worker, produces simulated transactions, waits until every one is scored
or dead-lettered, prints a summary, and stops what it started.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.local.manager import Stack
from streams.clients import consume, produce, topic_end_offsets, transactions_from_frame
from streams.feast_client import apply_repo
from streams.records import Score
from streams.settings import REPO_ROOT, Settings
from streams.topics import SCORES
from streams.worker import WorkerProcess

TRITON_REPO = REPO_ROOT / "triton_repo"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def published_versions(repo: Path = TRITON_REPO) -> list[int]:
    model_dir = repo / "fraud_detector"
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / "model.onnx").exists())


def ensure_first_model(repo: Path = TRITON_REPO, seed: int = 0) -> int:
    """Publish version 1, trained on simulated history, when no version exists yet."""
    versions = published_versions(repo)
    if versions:
        return versions[-1]
    from models.export import publish_version
    from models.reference_features import FEATURE_COLUMNS, add_reference_features
    from models.simulator import simulate
    from models.train import train_mlp

    log("training model v1 on 60 simulated days (1,000 cards, 2,000 terminals)")
    frame = add_reference_features(simulate(n_customers=1000, n_terminals=2000, nb_days=60))
    days = frame["TX_TIME_DAYS"].to_numpy()
    train, valid = frame[(days >= 30) & (days < 46)], frame[(days >= 53)]
    result = train_mlp(
        train[FEATURE_COLUMNS].to_numpy(np.float32), train["TX_FRAUD"].to_numpy(),
        X_val=valid[FEATURE_COLUMNS].to_numpy(np.float32), y_val=valid["TX_FRAUD"].to_numpy(),
        epochs=20, seed=seed,
    )
    publish_version(result.model, repo, 1)
    return 1


def load_model(triton_url: str, versions: list[int], repo: Path = TRITON_REPO) -> None:
    """Load exactly ``versions`` of ``fraud_detector`` into Triton (explicit control)."""
    import tritonclient.grpc as grpcclient

    from models.triton_config import load_request_config

    client = grpcclient.InferenceServerClient(url=triton_url)
    config = load_request_config(repo / "fraud_detector" / "config.pbtxt", versions)
    client.load_model("fraud_detector", config=config)
    for version in versions:
        if not client.is_model_ready("fraud_detector", str(version)):
            raise RuntimeError(f"fraud_detector version {version} did not become ready")


@dataclass
class Summary:
    produced: int
    scored: int
    distinct: int
    duplicates: int
    dead_lettered: int
    wall_s: float
    p50_ms: float
    p99_ms: float
    decisions: dict[str, int]
    model_versions: list[int]

    def print(self) -> None:
        rate = self.scored / self.wall_s if self.wall_s else 0.0
        print(json.dumps(self.__dict__, indent=2))
        print(f"\nscored {self.distinct:,} of {self.produced:,} transactions "
              f"({self.duplicates} duplicates, {self.dead_lettered} dead-lettered) "
              f"in {self.wall_s:.1f} s = {rate:,.0f} events/s; "
              f"latency p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms; "
              f"model versions {self.model_versions}")


def run(n_events: int = 5000, keep_up: bool = False, settings: Settings | None = None,
        triton_repo: Path = TRITON_REPO) -> Summary:
    """Run the factory end to end once and return its summary."""
    settings = settings or Settings.from_env()
    stack = Stack(settings, triton_repo=triton_repo)
    already = {name for name, state in stack.status().items() if state == "up"}
    log("starting services")
    endpoints = stack.up()
    worker: WorkerProcess | None = None
    try:
        log("applying the Feast repository")
        apply_repo(endpoints.redis)
        version = ensure_first_model(triton_repo)
        log(f"loading fraud_detector version {version} into Triton")
        load_model(endpoints.triton, [version], repo=triton_repo)

        from models.simulator import simulate

        frame = simulate(n_customers=1000, n_terminals=2000, nb_days=60)
        # Fresh transaction ids per run, so that earlier runs never count here.
        run_tag = int(time.time())
        frame = frame[frame["TX_TIME_DAYS"] >= 59].head(n_events).copy()
        frame["TRANSACTION_ID"] = run_tag * 10**6 + np.arange(len(frame))
        app_id = f"fraud-factory-run-{uuid.uuid4().hex[:8]}"
        worker = WorkerProcess(settings, app_id, offset_reset="latest",
                               log_path=str(settings.state_dir / "worker.log"),
                               metrics_port=settings.worker_metrics_port,
                               env={"FACTORY_STATE_DIR": str(settings.state_dir)})
        log(f"starting a stream worker ({app_id})")
        worker.start(endpoints.kafka)
        start = topic_end_offsets(endpoints.kafka, settings, SCORES)
        wanted = set(frame["TRANSACTION_ID"].tolist())
        log(f"producing {len(frame):,} simulated transactions")
        began = time.monotonic()
        produced = produce(endpoints.kafka, settings, transactions_from_frame(frame))
        seen: set[int] = set()

        def done(received: list) -> bool:  # noqa: ANN001
            if not worker.alive():
                raise SystemExit(f"the worker stopped; see {settings.state_dir / 'worker.log'}")
            for message in received[done.checked:]:
                seen.add(json.loads(message.value)["tx_id"])
            done.checked = len(received)  # type: ignore[attr-defined]
            return wanted <= seen

        done.checked = 0  # type: ignore[attr-defined]
        received = consume(endpoints.kafka, settings, SCORES, until=done, start=start,
                           timeout_s=180, progress="scores")
        wall = time.monotonic() - began
        scores = [Score.parse(m.value) for m in received]
        mine = [s for s in scores if s.tx_id in wanted]
        latencies = np.array([s.latency_ms for s in mine]) if mine else np.zeros(1)
        decisions: dict[str, int] = {}
        for s in mine:
            decisions[s.decision] = decisions.get(s.decision, 0) + 1
        summary = Summary(
            produced=produced, scored=len(mine), distinct=len({s.tx_id for s in mine}),
            duplicates=len(mine) - len({s.tx_id for s in mine}), dead_lettered=0,
            wall_s=round(wall, 2), p50_ms=float(np.percentile(latencies, 50)),
            p99_ms=float(np.percentile(latencies, 99)), decisions=decisions,
            model_versions=sorted({s.model_version for s in mine}),
        )
        summary.print()
        if summary.distinct < len(wanted):
            raise SystemExit(f"only {summary.distinct} of {len(wanted)} transactions scored; "
                             f"see {settings.state_dir / 'worker.log'}")
        return summary
    finally:
        if worker is not None:
            worker.stop()
        if not keep_up:
            stack.down([n for n in stack.services if n not in already])
