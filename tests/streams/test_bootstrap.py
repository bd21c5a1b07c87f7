"""A team's own data: ``factory bootstrap`` on a history with a drift, then ``factory serve``
scoring its continuation (after restarting its scoring worker, killed with ``kill -9``),
with the commands as typed, on a stack of its own."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streams.settings import Settings
from tests.streams.factory_shell import Shell, metrics, read_scores, shell
from tests.streams.sink_checks import assert_scored_once, read_to_end

__all__ = ["shell"]  # the fixture

pytestmark = pytest.mark.integration

REPLAY_COLUMNS = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT",
                  "TX_FRAUD"]


def simulated_history(path: Path) -> pd.DataFrame:
    """56 days of 300 cards with card testing from day 35, as a team would export it."""
    from models.drift import apply_drift
    from models.drift_spec import DriftSpec
    from models.simulator import simulate

    raw = simulate(n_customers=300, n_terminals=600, nb_days=56)
    world = apply_drift(raw, [DriftSpec.parse("card_testing:start=35,days=21,intensity=10")])
    world[REPLAY_COLUMNS].to_parquet(path)
    return world


def test_load_history_gives_the_batch_reference_of_the_simulator(tmp_path: Path) -> None:
    from models.extra_features import MODEL_FEATURE_COLUMNS, add_model_features
    from streams.jobs.bootstrap import load_history

    world = simulated_history(tmp_path / "history.parquet")
    loaded = load_history(tmp_path / "history.parquet", None, 7.0)
    assert loaded["TX_TIME_DAYS"].tolist() == world["TX_TIME_DAYS"].tolist()
    assert loaded["TX_TIME_SECONDS"].tolist() == world["TX_TIME_SECONDS"].tolist()
    ours = add_model_features(loaded)[list(MODEL_FEATURE_COLUMNS)].to_numpy()
    theirs = add_model_features(world)[list(MODEL_FEATURE_COLUMNS)].to_numpy()
    assert np.array_equal(ours, theirs)


def test_bootstrap_then_serve_continues_the_history_with_the_batch_reference_features(
    shell: Shell, tmp_path: Path,
) -> None:
    from models.extra_features import MODEL_FEATURE_COLUMNS, SERVING_NAMES, add_model_features
    from models.feature_log import wait_for_feature_log

    world = simulated_history(tmp_path / "history.parquet")
    until = str((world["TX_DATETIME"].iloc[0].normalize() + pd.Timedelta(days=42)).date())
    shell("up")
    out = shell("bootstrap", "--parquet", str(tmp_path / "history.parquet"), "--until", until,
                timeout=900)
    report = json.loads((tmp_path / "state" / "bootstrap" / "report.json").read_text())
    history = world[world["TX_DATETIME"] < until]
    assert report["transactions"] == len(history) > 15_000
    assert report["rows_equal_to_reference"] == report["streamed_rows"] == len(history), out
    assert report["version"] == 1 and 0 < report["test"]["average_precision"] <= 1
    assert "| last 14 days" in (tmp_path / "state" / "bootstrap" / "report.md").read_text()

    serve = shell.start("serve", "serve", "--mode", "strict", "--schedule-days", "0",
                        "--status-every", "5")
    log = tmp_path / "serve.log"
    deadline = time.monotonic() + 180
    while "serve: running" not in log.read_text():
        assert serve.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(1)
    # serve restarts a worker that dies; the new one restores the bootstrap's state.
    pid = int(re.search(r"serve: score worker up \(pid (\d+)", log.read_text()).group(1))  # type: ignore[union-attr]
    os.kill(pid, signal.SIGKILL)
    while "serve: the score worker is up again" not in log.read_text():
        assert serve.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline + 180, log.read_text()[-3000:]
        time.sleep(1)
    shell("replay", "--parquet", str(tmp_path / "history.parquet"), "--from", until, "--quiet")
    wanted = set(world["TRANSACTION_ID"].tolist())
    kafka = json.loads((tmp_path / "state" / "endpoints.json").read_text())["kafka"]
    records = read_scores(kafka, len(wanted), timeout_s=600)
    assert len({r["tx_id"] for r in records}) == len(wanted), "a transaction was not scored"

    logged = wait_for_feature_log(tmp_path / "state" / "feature_log", wanted)
    logged = logged.set_index("tx_id")
    reference = add_model_features(world).set_index("TRANSACTION_ID").loc[logged.index]
    names = [SERVING_NAMES[c] for c in MODEL_FEATURE_COLUMNS]
    differ = ~np.isclose(logged[names].to_numpy(np.float64),
                         reference[list(MODEL_FEATURE_COLUMNS)].to_numpy(np.float64),
                         rtol=0, atol=1e-6).all(axis=1)
    assert len(logged) == len(wanted) and not differ.any(), (
        f"{int(differ.sum())} of {len(logged)} rows differ from the batch reference")

    # Every retrainer and serving-guard metric the Grafana dashboard queries is on the live
    # scrape of serve's retrainer once it has read the continuation and its labels (the
    # workers' and Triton's: tests/infra/test_dashboard_live.py).
    from tests.infra.test_dashboard import NAME, queries, retrainer_names, worker_names

    port = int(shell.env["FACTORY_RETRAINER_METRICS_PORT"])
    wanted_names = {name for _, expr in queries() for name in NAME.findall(expr)} & (
        retrainer_names() - worker_names())
    assert wanted_names, "the dashboard queries no retrainer metric"

    def missing_names() -> set[str]:
        return wanted_names - {key.split("{")[0] for key in metrics(port)}

    deadline = time.monotonic() + 180
    while missing_names() and time.monotonic() < deadline:
        assert serve.poll() is None, log.read_text()[-3000:]
        time.sleep(2)
    assert not missing_names(), f"not on the live retrainer scrape: {sorted(missing_names())}"

    os.killpg(serve.pid, signal.SIGTERM)
    assert serve.wait(120) == 0, log.read_text()[-3000:]
    assert "serve: stopped" in log.read_text()
    # Its workers stopped with it: everything scored, the history and its continuation
    # across the kill -9 (done before the continuation came), is on the topic now.
    assert_scored_once(read_to_end(kafka, Settings(), "scores"), wanted)
