"""The ``factory`` command as a user types it, on a stack of its own: ``factory up`` in a
fresh state folder on free ports, and ``factory down`` at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from bench.fault_rig import scrape as metrics
from bench.fault_rig import stack_env as shell_env
from streams.settings import REPO_ROOT


class Shell:
    """``factory ...`` as a user types it, in one environment."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.background: list[subprocess.Popen[bytes]] = []

    def __call__(self, *argv: str, timeout: float = 300) -> str:
        result = subprocess.run([sys.executable, "-m", "streams.jobs.cli", *argv], cwd=REPO_ROOT,
                                env=self.env, text=True, capture_output=True, timeout=timeout)
        assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
        return result.stdout

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "streams.jobs.cli", *argv], cwd=REPO_ROOT,
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


T = TypeVar("T")


def wait_until(what: str, condition: Callable[[], T], timeout_s: float = 120.0,
               every: float = 0.2) -> T:
    """``condition()``'s first true value; fails with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(every)


def wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while metrics(port).get("factory_worker_ready") != 1.0:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "worker not ready in 120 s"
        time.sleep(0.5)


def read_scores(kafka: str, wanted: int, timeout_s: float) -> list[dict]:
    """Every record on ``scores`` (a fresh stack: nothing else wrote there), in offset
    order a partition, until ``wanted`` distinct transactions are seen."""
    from streams.clients.kafka_io import consume
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
        subprocess.run([sys.executable, "-m", "streams.jobs.cli", "down"], cwd=REPO_ROOT,
                       env=shell.env, capture_output=True, timeout=120)
