"""Two scoring and two labels workers in one consumer group each, on 8 partitions.

A stack of its own with ``FACTORY_PARTITIONS=8``; four ``factory worker`` processes in
strict mode, each with a static group membership id; 30 simulated days replayed at a
steady pace. Mid-stream one scoring and one labels worker are killed with ``kill -9``:
the scorer comes back under its id within its session timeout (static membership: the
group does not rebalance, its partitions wait for it), the labels worker is replaced by
one under a new id later (its partitions move to the survivor, then are shared again).
Every transaction is scored, duplicates are counted, and the features of every row
equal the batch reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import publish_test_model
from tests.streams.factory_shell import Shell, metrics, read_scores, shell, wait_ready, wait_until
from tests.streams.sink_checks import read_to_end
from tests.streams.test_parity import assert_parity

__all__ = ["shell"]  # the fixture

pytestmark = pytest.mark.integration

DAYS = 30
PARTITIONS = 8
GROUP = "scale"


class Workers:
    """The four workers: ``factory worker`` processes of one shell, by name."""

    def __init__(self, shell: Shell, base_port: int, log_dir: Path) -> None:
        self.shell, self.base_port, self.log_dir = shell, base_port, log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, role: str, instance: str) -> None:
        # A restarted worker keeps its name's port; a new name takes the next one.
        port = self.ports.get(name, self.base_port + len(self.ports))
        argv = ["worker", "--role", role, "--metrics-port", str(port),
                "--group-instance-id", instance, "--log-level", "warn"]
        if role == "score":
            # A static member's restart (a new process: imports, Faust's start) must
            # fit in the session timeout on a slow machine.
            argv += ["--mode", "strict", "--app-id", GROUP, "--labels-group",
                     f"{GROUP}-labels", "--feature-log", str(self.log_dir),
                     "--session-timeout", "45"]
        else:
            argv += ["--app-id", f"{GROUP}-labels", "--batch-wait", "0.5"]
        self.procs[name] = self.shell.start(name, *argv)
        self.ports[name] = port
        wait_ready(port, self.procs[name], self.shell.tmp / f"{name}.log")

    def kill(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(30)

    def sample(self, name: str, metric: str) -> float:
        return metrics(self.ports[name]).get(metric, 0.0)

    def owned(self, names: list[str], topic: str) -> list[float]:
        return [self.sample(n, f'factory_partitions_owned{{topic="{topic}"}}') for n in names]

    def alive(self) -> None:
        for name, proc in self.procs.items():
            if name not in ("score-2-killed", "labels-2-killed"):
                assert proc.poll() is None, (self.shell.tmp / f"{name}.log").read_text()[-3000:]


def test_two_workers_a_role_on_8_partitions_lose_nothing_through_kill_9_and_restarts(
    shell: Shell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models.extra_features import add_model_features
    from models.simulator import simulate
    from streams.clients.triton_models import load_model
    from streams.replay.dataset import Dataset
    from streams.replay.producer import ReplayOptions, replay
    from streams.settings import Settings

    shell.env["FACTORY_PARTITIONS"] = str(PARTITIONS)
    shell("up", "kafka", "redis", "triton")
    for name, value in shell.env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.partitions == PARTITIONS
    endpoints = json.loads((tmp_path / "state" / "endpoints.json").read_text())
    publish_test_model(settings.triton_repo, 1)
    load_model(endpoints["triton"], [1], repo=settings.triton_repo)

    workers = Workers(shell, int(shell.env["FACTORY_WORKER_METRICS_PORT"]),
                      tmp_path / "feature_log")
    for name, role in (("labels-1", "labels"), ("labels-2", "labels"),
                       ("score-1", "score"), ("score-2", "score")):
        workers.start(name, role, instance=name)
    scorers, labellers = ["score-1", "score-2"], ["labels-1", "labels-2"]
    # The partitions are shared: every one owned, by one worker, each worker some.
    wait_until("the 8 partitions shared by both scorers and both labels workers", lambda: (
        sorted(workers.owned(scorers, "transactions")) == [4.0, 4.0]
        and sorted(workers.owned(labellers, "labels")) == [4.0, 4.0]))

    frame = add_model_features(simulate(n_customers=400, n_terminals=800, nb_days=DAYS))
    failures: list[BaseException] = []

    def produce() -> None:
        try:
            report = replay(Dataset.from_frame(frame), endpoints["kafka"], settings,
                            ReplayOptions(progress=False, speed=DAYS * 86400 / 90))
            assert report.finished and report.rows == len(frame)
        except BaseException as exc:  # noqa: BLE001 - surfaced after the join
            failures.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()

    def scored() -> float:
        return sum(workers.sample(n, "factory_events_scored_total") for n in scorers)

    wait_until("a quarter of the stream scored", lambda: scored() >= 0.25 * len(frame))
    assert producer.is_alive(), "the stream ended before the kills: make it longer"
    assigned_before = workers.sample("score-1", "factory_partition_assignments_total")

    # kill -9 a scorer and a labels worker; the scorer comes back under its own id
    # within its session timeout (45 s).
    killed = time.monotonic()
    workers.kill("score-2")
    workers.kill("labels-2")
    workers.procs["score-2-killed"] = workers.procs.pop("score-2")
    workers.procs["labels-2-killed"] = workers.procs.pop("labels-2")
    time.sleep(2)
    workers.start("score-2", "score", instance="score-2")
    wait_until("the restarted scorer took its 4 partitions back", lambda: workers.owned(
        scorers, "transactions") == [4.0, 4.0])
    rebalanced = workers.sample("score-1", "factory_partition_assignments_total")
    back_s = time.monotonic() - killed

    # The labels worker's partitions move to the survivor after the session timeout...
    wait_until("the surviving labels worker took all 8 partitions", lambda: workers.owned(
        ["labels-1"], "labels") == [8.0], timeout_s=60)
    moved_s = time.monotonic() - killed
    # ...and are shared again with a worker under a new id.
    workers.start("labels-3", "labels", instance="labels-3")
    wait_until("the labels partitions shared again", lambda: sorted(workers.owned(
        ["labels-1", "labels-3"], "labels")) == [4.0, 4.0])
    workers.alive()

    producer.join()
    assert not failures, failures
    restore = 'factory_stage_seconds_total{stage="restore_state"}'
    restored_s = {n: workers.sample(n, restore) for n in ("score-2", "labels-1", "labels-3")}
    read_scores(endpoints["kafka"], len(frame), timeout_s=300)
    workers.alive()
    shell.stop_all()  # everything the workers wrote is on the topics
    ids = [json.loads(m.value)["tx_id"] for m in read_to_end(endpoints["kafka"], settings,
                                                             "scores")]
    assert set(ids) == set(frame["TRANSACTION_ID"].tolist()), "a transaction was not scored"
    duplicates = len(ids) - len(set(ids))
    print(f"{len(ids):,} scores for {len(frame):,} transactions: {duplicates} duplicates "
          f"(counted: redelivery after the kill -9); score-1 assignments "
          f"{assigned_before:.0f} before the scorer's restart, {rebalanced:.0f} after it; "
          f"the scorer back with its partitions {back_s:.1f} s after the kill, the labels "
          f"partitions on the survivor after {moved_s:.1f} s; state restored from the "
          f"changelogs in (s) {restored_s}")
    # Static membership: the scorer restarted under its id got its partitions back
    # without a rebalance of the group (the survivor was not assigned again).
    assert rebalanced == assigned_before, "the group rebalanced for a static member's restart"
    assert_parity(frame, tmp_path / "feature_log")
