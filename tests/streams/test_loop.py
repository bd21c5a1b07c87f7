"""The closed loop end to end (``factory run``), small, on its own fresh services."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from infra.local.base import free_port, port_is_open
from streams.jobs.loop import run_loop
from streams.jobs.loop_world import LoopSize
from streams.settings import REPO_ROOT, Settings
from streams.topics import SCORES
from tests.streams.sink_checks import read_when_services_stop, tx_ids

PORTS = ("kafka_port", "kafka_controller_port", "redis_port", "triton_http_port",
         "triton_grpc_port", "triton_metrics_port", "prometheus_port", "alertmanager_port",
         "worker_metrics_port")

pytestmark = pytest.mark.integration


def _free_ports() -> dict[str, int]:
    """A free port each; the labels worker's metrics take the port after the scorer's,
    so that one must be free too."""
    ports = {name: free_port() for name in PORTS}
    while port_is_open(ports["worker_metrics_port"] + 1):
        ports["worker_metrics_port"] = free_port()
    return ports


def test_the_loop_retrains_gates_and_swaps_while_every_event_is_scored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = tmp_path / "triton_repo"
    (repo / "fraud_detector").mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "triton_repo" / "fraud_detector" / "config.pbtxt",
                    repo / "fraud_detector" / "config.pbtxt")
    settings = dataclasses.replace(Settings(), state_dir=tmp_path / "state",
                                   **_free_ports())
    # The first retraining is due at day 35 and must be promoted while the stream still
    # runs: from due to promoted took 15-22 s on a shared 2-core machine, and the 21
    # days after day 35 last 52 s at 2.5 s a day.
    size = LoopSize(customers=250, terminals=500, days=56, first_model_end_day=28,
                    drift="card_testing:start=35,days=21,intensity=10",
                    seconds_per_day=2.5, retrain_epochs=4)
    scores = read_when_services_stop(monkeypatch, SCORES)
    summary = run_loop(size, settings=settings, triton_repo=repo)

    assert summary["scored"] == summary["transactions"] > 10_000
    assert summary["duplicates"] == 0 and summary["skew_rows"] == 0
    # The loop's own count stops at the last new id: the topic read to its end, once its
    # workers stopped, holds one score a transaction and no more.
    assert scores.error is None, scores.error
    ids = tx_ids(scores.records)
    assert len(ids) == len(set(ids)) == summary["transactions"], (
        f"{len(ids)} scores of {len(set(ids))} transactions; {summary['transactions']} sent")
    figures = summary["figures"]
    assert len(figures["promotions"]) >= 1, "the retrainer put a new version in service"
    assert len(figures["serving_versions"]) >= 2
    assert all(p["cycle_seconds"] > 0 for p in figures["promotions"])
    assert math.isfinite(figures["ap_gain"]) and figures["post_drift_frauds"] > 0
    run_dir = settings.state_dir / "runs" / f"loop-{summary['run']}"
    events = [json.loads(line) for line in (run_dir / "model-events.jsonl").read_text()
              .splitlines()]
    kinds = [e["event"] for e in events]
    assert {"retrain_started", "shadow_started", "promoted", "unloaded"} <= set(kinds)
    assert kinds.index("retrain_started") < kinds.index("promoted")
    # Every version that served was registered, with its lineage back to the first.
    registry = {v["version"]: v for v in summary["registry"]}
    for version in figures["serving_versions"]:
        assert version in registry
    assert (run_dir / "loop.png").stat().st_size > 10_000
    assert "served (loop)" in (run_dir / "report.md").read_text()
    ports = [getattr(settings, name) for name in PORTS]
    assert not any(port_is_open(port) for port in ports), "the loop stopped its services"


# Figures that depend on the machine: wall seconds, and the version numbers the shared
# model repository hands out (each run registers its own).
WALL_CLOCK_FIGURES = ("cycle_seconds", "promotions", "serving_versions", "rejections")


def test_on_the_event_clock_the_same_run_gives_the_same_figures(tmp_path: Path) -> None:
    """``factory run --clock event``: each day is scored and acted on before the next,
    so two runs of one world agree on every quality figure, every drift decision and
    every promotion's event time, whatever the machine's speed; with investigators'
    feedback too."""
    repo = tmp_path / "triton_repo"
    (repo / "fraud_detector").mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "triton_repo" / "fraud_detector" / "config.pbtxt",
                    repo / "fraud_detector" / "config.pbtxt")
    size = LoopSize(customers=150, terminals=300, days=42, first_model_end_day=21,
                    drift="card_testing:start=28,days=14,intensity=10", retrain_epochs=3,
                    clock="event", reviews_per_day=20)
    runs, timelines = [], []
    for n in range(2):
        settings = dataclasses.replace(Settings(), state_dir=tmp_path / f"state-{n}",
                                       **_free_ports())
        summary = run_loop(size, settings=settings, triton_repo=repo)
        assert summary["scored"] == summary["transactions"] > 5_000
        assert summary["duplicates"] == 0 and summary["skew_rows"] == 0
        # Investigators reviewed 20 cards a day and the retrainer trained on their
        # verdicts beside the delayed labels.
        feedback = summary["feedback"]
        assert feedback["labels"] > 0 and feedback["fraud_cards_found"] > 0
        assert all(day["cards"] == 20 for day in feedback["days"])
        assert any(v["metrics"].get("feedback_rows", 0) > 0 for v in summary["registry"]
                   if v["trigger"] != "initial")
        runs.append(summary)
        run_dir = settings.state_dir / "runs" / f"loop-{summary['run']}"
        events = [json.loads(line) for line in
                  (run_dir / "model-events.jsonl").read_text().splitlines()]
        # What happened and at which event time (version numbers and wall times aside).
        timelines.append([(e["event"], e.get("monitor"), e.get("feature"),
                           e.get("event_time"), e.get("trigger"), e.get("reason"),
                           e.get("statistic")) for e in events])
    first, second = (r["figures"] for r in runs)
    assert first["promotions"], "the retrainer put a new version in service"
    for name in first:
        if name not in WALL_CLOCK_FIGURES:
            assert first[name] == second[name], name
    # A rejection's verdict, not its timings or the path of its graph.
    verdicts = [[(r["reasons"], r["n_rows"], r["average_precision"]) for r in run["rejections"]]
                for run in (first, second)]
    assert verdicts[0] == verdicts[1]
    assert len(first["promotions"]) == len(second["promotions"])
    assert timelines[0] == timelines[1]
