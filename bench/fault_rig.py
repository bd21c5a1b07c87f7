"""The parts of the fault run (``bench/faults.py``): a stack of its own with ``factory
serve`` on it, malformed events, the faults themselves, and a watch over the metrics and
alerts while they happen."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import log
from infra.local.base import free_port, port_is_open
from streams.settings import REPO_ROOT, Settings

EXTRA_ID = 9_000_000_000
"""Ids of the valid events with unknown fields (cards and terminals of their own)."""


def stack_env(tmp: Path) -> dict[str, str]:
    """The environment of a stack of its own: state in ``tmp``, free ports."""
    repo = tmp / "triton_repo"
    (repo / "fraud_detector").mkdir(parents=True, exist_ok=True)
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


def scrape(port: int) -> dict[str, float]:
    """A metrics endpoint's samples (empty while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except (OSError, http.client.HTTPException):
        # Down, or a free port that a connection of its own happened to take.
        return {}
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in text.splitlines() if line and line[0] != "#")}


def _sum(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


# ---------------------------------------------------------------------------- bad events

def bad_event(kind: str, n: int, template: dict[str, Any]) -> tuple[bytes, bytes | None, str]:
    """``(key, value, expected reason)`` of malformed event ``n`` of ``kind``."""
    good = json.dumps(template).encode()
    key = str(template["card_id"]).encode()
    if kind == "not_json":
        return key, b"card 7 paid 12 EUR at terminal 3", "not_json"
    if kind == "truncated":
        return key, good[: len(good) // 2], "not_json"
    if kind == "wrong_type":
        return key, json.dumps({**template, "amount": "12.50"}).encode(), "wrong_type"
    if kind == "huge_number":
        field_, value = [("tx_id", 10**30), ("amount", 1e300), ("event_time", 1e15)][n % 3]
        return key, json.dumps({**template, field_: value}).encode(), "invalid_value"
    if kind == "unknown_version":
        return key, json.dumps({**template, "v": 2}).encode(), "unknown_schema_version"
    if kind == "empty":
        return key, b"", "not_json"
    if kind == "one_megabyte":
        return key, b'{"v": 1, "pad": "' + b"x" * (1 << 20) + b'"}', "payload_too_large"
    if kind == "invalid_utf8":
        return key, b'{"v": 1, "tx_id": "\xff\xfe"}', "not_json"
    if kind == "key_not_the_card":
        return b"not-the-card", good, "key_mismatch"
    raise ValueError(kind)


BAD_KINDS = ("not_json", "truncated", "wrong_type", "huge_number", "unknown_version",
             "empty", "one_megabyte", "invalid_utf8", "key_not_the_card")


@dataclass
class Injected:
    """What the bad-event producer sent: each bad event's place and expected reason, and
    the valid events with unknown fields."""

    bad: dict[tuple[int, int], str] = field(default_factory=dict)
    extra_valid: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)


def inject(kafka: str, settings: Settings, rate: float, stop: threading.Event,
           injected: Injected, seed: int = 0) -> None:
    """Produce malformed events (and valid ones with unknown fields) at ``rate`` a second."""
    from streams.clients.kafka_io import producer

    client = producer(kafka, settings, **{"linger.ms": 5})
    rng = random.Random(seed)
    n = 0

    def delivered(kind: str, reason: str | None, tx: int | None):  # noqa: ANN202
        def on_delivery(err, msg) -> None:  # noqa: ANN001
            if err is not None:
                injected.errors.append(f"{kind}: {err}")
            elif reason is not None:
                injected.bad[(msg.partition(), msg.offset())] = reason
            elif tx is not None:
                injected.extra_valid.add(tx)
        return on_delivery

    while not stop.wait(1.0 / rate):
        n += 1
        template = {"v": 1, "tx_id": EXTRA_ID + n, "event_time": 1522540800 + n,
                    "card_id": EXTRA_ID + n % 50, "terminal_id": EXTRA_ID + n % 80,
                    "amount": round(rng.uniform(1, 200), 2)}
        if n % 10 == 0:
            # Valid, with fields this worker does not know: accepted and scored.
            value = json.dumps({**template, "channel": "web", "device": {"os": "x"}}).encode()
            client.produce("transactions", value, str(template["card_id"]).encode(),
                           on_delivery=delivered("unknown_fields", None, template["tx_id"]))
        else:
            kind = BAD_KINDS[n % len(BAD_KINDS)]
            key, value, reason = bad_event(kind, n, template)
            client.produce("transactions", value, key,
                           on_delivery=delivered(kind, reason, None))
        client.poll(0)
    client.flush(30)


# ---------------------------------------------------------------------------- the rig

class Rig:
    """A stack of its own, ``factory serve`` on it, and the means to break its parts."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.env = stack_env(tmp)
        self.procs: list[subprocess.Popen[bytes]] = []
        for name, value in self.env.items():
            os.environ[name] = value
        self.settings = Settings.from_env()
        self.worker_port = int(self.env["FACTORY_WORKER_METRICS_PORT"])
        self.guard_port = int(self.env["FACTORY_RETRAINER_METRICS_PORT"])
        self.tmpfs: Path | None = None

    def factory(self, *argv: str, timeout: float = 600) -> str:
        result = subprocess.run([sys.executable, "-m", "streams.jobs.cli", *argv], cwd=REPO_ROOT,
                                env=self.env, text=True, capture_output=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"factory {' '.join(argv)} failed: {result.stderr[-2000:]}")
        return result.stdout

    def start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "streams.jobs.cli", *argv], cwd=REPO_ROOT,
                                env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    @property
    def endpoints(self) -> dict[str, str]:
        return json.loads((self.tmp / "state" / "endpoints.json").read_text())

    def service(self, name: str) -> Any:
        from infra.local.manager import Stack
        from streams.topics import kafka_layout

        return Stack(self.settings, kafka_layout(self.settings.partitions)).services[name]

    def worker_pid(self, role: str) -> int:
        found = re.findall(rf"{role} worker (?:up|is up again) \(pid (\d+)",
                           (self.tmp / "serve.log").read_text())
        return int(found[-1])

    def mount_feature_log_disk(self, megabytes: int = 512) -> bool:
        """The feature log on a tmpfs of its own (a disk that can fill up); False when
        this process may not mount one."""
        target = self.tmp / "state" / "feature_log"
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
                               str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            log(f"no disk to fill: cannot mount a tmpfs ({done.stderr.strip()[:200]})")
            return False
        self.tmpfs = target
        return True

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "streams.jobs.cli", "down"], cwd=REPO_ROOT,
                       env=self.env, capture_output=True, timeout=180)
        if self.tmpfs is not None:
            subprocess.run(["umount", "-l", str(self.tmpfs)], capture_output=True)


# ---------------------------------------------------------------------------- faults

@dataclass
class FaultRecord:
    """One fault: when, how long until scoring caught up, what it cost, what alerted."""

    fault: str
    started: float
    cleared: float = 0.0
    recovered: float | None = None
    recovery_s: float | None = None
    duplicates: int = 0
    alerts: list[str] = field(default_factory=list)
    signals: list[str] = field(default_factory=list)
    note: str = ""
    window_end: float = 0.0


class Watch:
    """Samples the workers' and the guard's metrics and Prometheus' alerts, every 0.5 s."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.alerts: list[tuple[float, set[str]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a missed sample, not a stopped watch
                log(f"watch: a sample failed ({type(exc).__name__}: {exc})")

    def sample(self) -> None:
        prometheus = self.rig.endpoints.get("prometheus")
        now = time.time()
        score = scrape(self.rig.worker_port)
        labels = scrape(self.rig.worker_port + 1)
        guard = scrape(self.rig.guard_port)
        self.samples.append((now, {
            "scored": _sum(score, "factory_events_scored_total"),
            "lag": _sum(score, "factory_consumer_lag") + _sum(labels, "factory_consumer_lag"),
            "serving_ready": guard.get("factory_serving_ready", float("nan")),
            "waiting_route": score.get('factory_waiting_for_lost_state{state="route"}', 0),
            "waiting_labels": score.get('factory_waiting_for_lost_state{state="labels"}', 0),
            "feature_log_blocked": score.get("factory_feature_log_blocked", 0),
            "up_score": float(bool(score)), "up_labels": float(bool(labels)),
        }))
        if prometheus:
            try:
                with urllib.request.urlopen(f"{prometheus}/api/v1/alerts",
                                            timeout=2) as reply:
                    body = json.loads(reply.read())
                self.alerts.append((now, {f"{a['labels']['alertname']} ({a['state']})"
                                          for a in body["data"]["alerts"]}))
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                pass

    def latest(self) -> dict[str, float]:
        return self.samples[-1][1] if self.samples else {}

    def wait_recovered(self, since: float, rate: float, timeout_s: float = 300.0) -> float | None:
        """The first time after ``since`` (the fault cleared: the service back, the
        process killed) at which both workers answer, the score count has moved past its
        value at ``since`` and the lag is under two seconds of load, held for two samples;
        ``None`` on timeout."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            window = [(t, s) for t, s in self.samples if t >= since]
            scored0 = next((s["scored"] for t, s in self.samples if t >= since), None)
            ok = [t for t, s in window
                  if scored0 is not None and s["scored"] > scored0 and s["up_score"]
                  and s["up_labels"] and s["lag"] <= 2 * rate]
            for a, b in zip(ok, ok[1:], strict=False):
                if b - a < 1.5:
                    return a
            time.sleep(0.5)
        return None

    def seen(self, start: float, end: float) -> tuple[list[str], list[str]]:
        """Alerts that became pending or firing in ``[start, end]`` (not those already so
        before ``start``), and the factory's own signals there."""
        before = set().union(*[a for t, a in self.alerts if t < start][-1:] or [set()])
        during = set().union(*[a for t, a in self.alerts if start <= t <= end] or [set()])
        alerts = sorted(during - before)
        signals: set[str] = set()
        for t, s in self.samples:
            if start <= t <= end:
                if s["serving_ready"] == 0:
                    signals.add("factory_serving_ready=0")
                if s["waiting_route"]:
                    signals.add("waiting for the lost route")
                if s["waiting_labels"]:
                    signals.add("waiting for the lost label state")
                if s.get("feature_log_blocked"):
                    signals.add("feature log blocked")
                if not s["up_score"]:
                    signals.add("score worker down")
                if not s["up_labels"]:
                    signals.add("labels worker down")
        return alerts, sorted(signals)


def kill_worker(rig: Rig, role: str) -> Callable[[], str]:
    def fault() -> str:
        pid = rig.worker_pid(role)
        os.kill(pid, signal.SIGKILL)
        return f"pid {pid} killed; factory serve restarts it"
    return fault


def restart_kafka(rig: Rig) -> str:
    service = rig.service("kafka")
    pid = service.pid()
    if pid:
        os.killpg(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while service.running() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(5)
    service.start()
    return "broker killed with kill -9, started 5 s later"


def restart_triton(rig: Rig) -> str:
    service = rig.service("triton")
    service.stop()
    service.start()
    return "stopped and started bare (no model loaded)"


def start_empty(service: Any) -> None:
    """Stop a local Redis, delete what it keeps, start it again with no data."""
    service.stop()
    for leftover in (service.home / "appendonlydir", service.home / "dump.rdb"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover.exists():
            leftover.unlink()
    service.start()


def restart_redis_empty(rig: Rig) -> str:
    start_empty(rig.service("redis"))
    return "stopped and started empty (no data kept)"


def fill_disk(rig: Rig, hold_s: float = 15.0) -> str:
    assert rig.tmpfs is not None
    filler = rig.tmpfs / "filler.bin"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
    time.sleep(hold_s)
    filler.unlink()
    return f"the feature log's disk full for {hold_s:.0f} s, then freed"


def stop_alertmanager(rig: Rig, hold_s: float = 20.0) -> str:
    service = rig.service("alertmanager")
    service.stop()
    time.sleep(hold_s)
    service.start()
    return f"down for {hold_s:.0f} s"
