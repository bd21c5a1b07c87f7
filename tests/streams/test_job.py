"""The README's main command, end to end on its own fresh services."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from infra.local.base import free_port, port_is_open
from streams.jobs.job import JobSize, run
from streams.settings import REPO_ROOT, Settings
from streams.topics import SCORES
from tests.streams.sink_checks import read_when_services_stop, tx_ids

pytestmark = pytest.mark.integration


def test_main_job_scores_every_transaction_once_and_stops_its_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = tmp_path / "triton_repo"
    (repo / "fraud_detector").mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "triton_repo" / "fraud_detector" / "config.pbtxt",
                    repo / "fraud_detector" / "config.pbtxt")
    settings = dataclasses.replace(
        Settings(), state_dir=tmp_path / "state", kafka_port=free_port(),
        kafka_controller_port=free_port(), redis_port=free_port(),
        triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(), prometheus_port=free_port(),
        alertmanager_port=free_port(),
        worker_metrics_port=free_port(),
    )
    size = JobSize(customers=150, terminals=300, days=45)
    scores = read_when_services_stop(monkeypatch, SCORES)
    summary = run(size, settings=settings, triton_repo=repo)
    assert summary.produced > 5000
    assert summary.distinct == summary.produced and summary.duplicates == 0
    # The run's own count stops at the last new id: the topic read to its end, once its
    # workers stopped, holds one score a transaction and no more.
    assert scores.error is None, scores.error
    ids = tx_ids(scores.records)
    assert len(ids) == len(set(ids)) == summary.produced, (
        f"{len(ids)} scores of {len(set(ids))} transactions; {summary.produced} produced")
    assert summary.skew_rows == 0 and summary.parity_rows == summary.produced
    assert summary.test_auc_roc > 0.6
    assert summary.model_versions == [1]
    assert sum(summary.decisions.values()) == summary.produced
    assert (repo / "fraud_detector" / "1" / "model.onnx").exists()
    ports = [settings.kafka_port, settings.redis_port, settings.triton_grpc_port,
             settings.prometheus_port, settings.worker_metrics_port]
    assert not [p for p in ports if port_is_open(p)]
