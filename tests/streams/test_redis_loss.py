"""A Redis that comes back empty mid-stream loses nothing the factory serves.

``factory serve --mode strict`` on a stack of its own, 30 simulated days replayed at a
steady pace, and Redis stopped and started again with no data (as a pod without a
volume comes back). The route comes back from the registry, the labels worker pushes its
terminal tables again and re-marks the watermark, the scoring worker pushes its card
view again and scores nothing while the terminal label state is missing; every
transaction is scored, with features equal to the batch reference on every row, and the
online store holds the last streamed state again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import types
from pathlib import Path

import pytest

from bench.fault_rig import start_empty
from tests.conftest import publish_test_model
from tests.streams.factory_shell import Shell, metrics, read_scores, shell, wait_ready
from tests.streams.sink_checks import read_to_end
from tests.streams.test_parity import assert_online_state, assert_parity

__all__ = ["shell"]  # the fixture

pytestmark = pytest.mark.integration

DAYS = 30


def test_a_redis_restarted_empty_is_filled_again_before_scoring_and_features_stay_equal(
    shell: Shell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from infra.local.manager import Stack
    from models.extra_features import add_model_features
    from models.simulator import simulate
    from streams.clients.router import ModelRouter
    from streams.dataplane.store_marks import marks_key
    from streams.replay.dataset import Dataset
    from streams.replay.producer import ReplayOptions, replay
    from streams.settings import Settings
    from streams.topics import kafka_layout

    shell("up")
    for name, value in shell.env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    endpoints = json.loads((tmp_path / "state" / "endpoints.json").read_text())
    publish_test_model(settings.triton_repo, 1)

    port = int(shell.env["FACTORY_WORKER_METRICS_PORT"])
    serve = shell.start("serve", "serve", "--mode", "strict", "--no-retrainer",
                        "--status-every", "2")
    wait_ready(port + 1, serve, tmp_path / "serve.log")
    wait_ready(port, serve, tmp_path / "serve.log")

    frame = add_model_features(simulate(n_customers=400, n_terminals=800, nb_days=DAYS))
    failures: list[BaseException] = []

    def produce() -> None:
        try:
            report = replay(Dataset.from_frame(frame), endpoints["kafka"], settings,
                            ReplayOptions(progress=False, speed=DAYS * 86400 / 60))
            assert report.finished and report.rows == len(frame)
        except BaseException as exc:  # noqa: BLE001 - surfaced after the join
            failures.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    deadline = time.monotonic() + 120
    while metrics(port).get("factory_events_scored_total", 0.0) < 0.3 * len(frame):
        assert time.monotonic() < deadline, "a third of the stream not scored in 120 s"
        assert producer.is_alive(), failures
        time.sleep(0.2)

    # The labels worker is paused through the loss, so that the scorer finds the label
    # state missing (rather than racing the labels worker's restore).
    labels_pid = int(re.search(r"labels worker up \(pid (\d+)",  # type: ignore[union-attr]
                               (tmp_path / "serve.log").read_text()).group(1))
    redis = Stack(settings, kafka_layout(settings.partitions)).services["redis"]
    os.kill(labels_pid, signal.SIGSTOP)
    try:
        start_empty(redis)
        assert producer.is_alive(), "the stream ended before Redis was lost: make it longer"
        deadline = time.monotonic() + 60
        while metrics(port).get('factory_waiting_for_lost_state{state="labels"}') != 1.0:
            assert time.monotonic() < deadline, "the scorer did not stop for the lost labels"
            time.sleep(0.1)
        held = metrics(port)["factory_events_scored_total"]
        time.sleep(3)
        assert metrics(port)["factory_events_scored_total"] == held, \
            "scored on a store without its label state"
    finally:
        os.kill(labels_pid, signal.SIGCONT)

    router = ModelRouter(endpoints["redis"])
    try:
        deadline = time.monotonic() + 60
        while (router.route() is None
               or router.client.hlen(marks_key("fraud-factory-labels")) < settings.partitions
               or router.client.hlen(marks_key("fraud-factory")) < settings.partitions):
            assert time.monotonic() < deadline, "the route or the store marks not restored"
            time.sleep(0.2)
        assert router.route().serving == 1  # type: ignore[union-attr]
    finally:
        router.close()

    producer.join()
    assert not failures, failures
    read_scores(endpoints["kafka"], len(frame), timeout_s=300)
    assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
    shell.stop_all()  # serve's workers stop: everything they wrote is on the topics
    ids = [json.loads(m.value)["tx_id"] for m in read_to_end(endpoints["kafka"], settings,
                                                             "scores")]
    assert set(ids) == set(frame["TRANSACTION_ID"].tolist()), "a transaction was not scored"
    print(f"{len(ids) - len(set(ids))} duplicate scores after the Redis loss (counted)")

    logged = assert_parity(frame, settings.state_dir / "feature_log")
    assert_online_state(types.SimpleNamespace(endpoints=types.SimpleNamespace(
        redis=endpoints["redis"])), frame, logged)

    score_log = (settings.state_dir / "serve" / "score-worker.log").read_text()
    assert "lost the terminal label state" in score_log, score_log[-3000:]
    assert "the terminal label state is back" in score_log, score_log[-3000:]
