"""The ``factory`` command as a user types it, on a stack of its own: ``factory up`` in a
fresh state folder on free ports, and ``factory down`` at the end."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.base import free_port, port_is_open
from streams.settings import REPO_ROOT


def shell_env(tmp: Path) -> dict[str, str]:
    repo = tmp / "triton_repo"
    (repo / "fraud_detector").mkdir(parents=True)
    shutil.copyfile(REPO_ROOT / "triton_repo" / "fraud_detector" / "config.pbtxt",
                    repo / "fraud_detector" / "config.pbtxt")
    metrics = free_port()
    while port_is_open(metrics + 1):  # the labels worker takes the one after it
        metrics = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "TRITON_URL")}
    env.update({
        "FACTORY_STATE_DIR": str(tmp / "state"), "FACTORY_TRITON_REPO": str(repo),
        "FACTORY_WORKER_METRICS_PORT": str(metrics),
        **{var: str(free_port()) for var in (
            "FACTORY_KAFKA_PORT", "FACTORY_KAFKA_CONTROLLER_PORT", "FACTORY_REDIS_PORT",
            "FACTORY_TRITON_HTTP_PORT", "FACTORY_TRITON_GRPC_PORT",
            "FACTORY_TRITON_METRICS_PORT", "FACTORY_PROMETHEUS_PORT",
            "FACTORY_ALERTMANAGER_PORT", "FACTORY_RETRAINER_METRICS_PORT",
            "FACTORY_WORKER_WEB_PORT")},
    })
    return env


class Shell:
    """``factory ...`` as a user types it, in one environment."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.background: list[subprocess.Popen[bytes]] = []

    def __call__(self, *argv: str, timeout: float = 300) -> str:
        result = subprocess.run([sys.executable, "-m", "streams.cli", *argv], cwd=REPO_ROOT,
                                env=self.env, text=True, capture_output=True, timeout=timeout)
        assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
        return result.stdout

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *argv], cwd=REPO_ROOT,
                                env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.background.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.background:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def metrics(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except (OSError, http.client.HTTPException):
        # Down, or a free port that a connection of its own happened to take.
        return {}
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in text.splitlines() if line and line[0] != "#")}


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while metrics(port).get("factory_worker_ready") != 1.0:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "worker not ready in 120 s"
        time.sleep(0.5)


def read_scores(kafka: str, wanted: int, timeout_s: float) -> list[dict]:
    """Every record on ``scores`` (a fresh stack: nothing else wrote there), in offset
    order a partition, until ``wanted`` distinct transactions are seen."""
    from streams.clients import consume
    from streams.settings import Settings

    seen: set[int] = set()

    def done(received: list) -> bool:
        for message in received[len(records):]:
            record = json.loads(message.value)
            record["_partition"] = message.partition
            records.append(record)
            seen.add(record["tx_id"])
        return len(seen) >= wanted

    records: list[dict] = []
    consume(kafka, Settings(), "scores", until=done, timeout_s=timeout_s)
    return records


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[Shell]:
    shell = Shell(shell_env(tmp_path), tmp_path)
    try:
        yield shell
    finally:
        shell.stop_all()
        subprocess.run([sys.executable, "-m", "streams.cli", "down"], cwd=REPO_ROOT,
                       env=shell.env, capture_output=True, timeout=120)
