"""Two Tritons serving one model repository: the scoring worker spreads its requests
over both, loses no request when one stops and comes back bare, and a swap loads,
routes and unloads on both, all under a steady paced load.

A stack of its own (``FACTORY_TRITON_REPLICAS=2 factory up``, free ports), a first model
trained and promoted, a second trained, then ``factory serve --no-retrainer`` under a
paced replay while the test stops the second Triton, starts it again with nothing
loaded (the serving guard loads the routed version there), and promotes the second
model (``factory model promote``: shadow, swap, drain, unload).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from infra.local.base import free_port, port_is_open
from tests.streams.factory_shell import Shell, metrics, read_scores, shell, wait_ready, wait_until
from tests.streams.sink_checks import assert_scored_once, read_to_end

__all__ = ["shell"]  # the fixture

pytestmark = pytest.mark.integration

WORLD = ["--simulate", "--customers", "400", "--terminals", "800", "--days", "90", "--quiet"]
TRAIN = ["model", "train", "--customers", "200", "--terminals", "400", "--days", "45"]
TOTAL = 40_000


def _consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports on which nothing listens."""
    for _ in range(200):
        first = free_port()
        if first + count <= 65535 and not any(port_is_open(p)
                                              for p in range(first, first + count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


def _ready(url: str) -> list[int]:
    from streams.lifecycle.swap import triton_ready_versions

    try:
        return triton_ready_versions(url)
    except Exception:  # noqa: BLE001 - down: serves nothing
        return []


def _model_events(kafka: str) -> list[dict]:
    from streams.clients.kafka_io import consume, topic_end_offsets
    from streams.settings import Settings

    ends = topic_end_offsets(kafka, Settings(), "model-events")
    received = consume(kafka, Settings(), "model-events", timeout_s=30,
                       until=lambda got: len(got) >= sum(ends.values()))
    return [json.loads(m.value) for m in received]


def test_two_tritons_lose_no_request_when_one_stops_and_comes_back_bare_and_swap_on_both(
    shell: Shell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from infra.local.manager import Stack
    from streams.settings import Settings
    from streams.topics import kafka_layout

    first = _consecutive_free_ports(6)
    shell.env.update({
        "FACTORY_TRITON_REPLICAS": "2", "FACTORY_TRITON_HTTP_PORT": str(first),
        "FACTORY_TRITON_GRPC_PORT": str(first + 1),
        "FACTORY_TRITON_METRICS_PORT": str(first + 2)})
    shell("up")
    endpoints = json.loads((tmp_path / "state" / "endpoints.json").read_text())
    kafka = endpoints["kafka"]
    one, two = endpoints["triton"].split(",")
    assert (one, two) == (f"127.0.0.1:{first + 1}", f"127.0.0.1:{first + 4}")
    out = shell(*TRAIN, "--promote")
    assert "version 1 is the champion and serves" in out, out
    assert _ready(one) == _ready(two) == [1]
    out = shell(*TRAIN, "--seed", "1")
    assert "version 2 (parent 1)" in out, out

    worker_port = int(shell.env["FACTORY_WORKER_METRICS_PORT"])
    serve = shell.start("serve", "serve", "--no-retrainer", "--status-every", "2")
    wait_ready(worker_port, serve, tmp_path / "serve.log")
    load = shell.start("replay", "replay", *WORLD, "--limit", str(TOTAL), "--speed", "28800")

    def sample(name: str, endpoint: str | None = None) -> float:
        key = f'{name}{{endpoint="{endpoint}"}}' if endpoint else name
        return metrics(worker_port).get(key, 0.0)

    def scored() -> float:
        return sample("factory_events_scored_total")

    def requests(endpoint: str) -> float:
        return sample("factory_triton_endpoint_requests_total", endpoint)

    wait_until("first scores", lambda: scored() > 1500)
    assert requests(one) > 0 and requests(two) > 0, "both Tritons take requests"

    def failed_attempts() -> float:
        return sample("factory_triton_errors_total")

    # The second Triton goes away: the first one serves alone, no request fails.
    for name, value in shell.env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    second = Stack(settings, kafka_layout(settings.partitions)).services["triton-2"]
    up_seen: list[float] = []
    sampling = threading.Event()

    def watch() -> None:
        while not sampling.is_set():
            up_seen.append(sample("factory_triton_endpoint_up", two))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    second.stop()
    before = scored()
    wait_until("scoring on the first Triton alone", lambda: scored() > before + 1500,
          timeout_s=60)
    assert 0.0 in up_seen, "the worker never marked the stopped Triton down"
    skipped, attempts = requests(two), failed_attempts()
    wait_until("more scoring on the first Triton alone", lambda: scored() > before + 2500,
          timeout_s=60)
    assert failed_attempts() == attempts, "a request went to the stopped Triton"
    assert requests(two) == skipped

    # Back with nothing loaded, as a rescheduled pod comes back: the guard loads the
    # routed version, and the worker sends it requests again.
    second.start()
    wait_until("version 1 READY on the second Triton again", lambda: _ready(two) == [1],
          timeout_s=90)
    wait_until("the second Triton taking requests again", lambda: requests(two) > skipped + 20,
          timeout_s=60)
    sampling.set()
    watcher.join()
    assert load.poll() is None, "the load ended before the restart was over: make it longer"

    # The swap, under the same load: version 2 loaded on both, routed, 1 unloaded.
    out = shell("model", "promote", "2", "--force", "--shadow-rows", "1000",
                "--shadow-timeout", "60")
    assert "version 2 serves (was 1" in out and "version 1 unloaded" in out, out
    assert load.poll() is None, "the load ended before the swap was over: make it longer"
    assert _ready(one) == _ready(two) == [2], "version 2 alone on both Tritons"
    at_swap = {url: requests(url) for url in (one, two)}
    wait_until("both Tritons serving version 2",
          lambda: all(requests(url) > at_swap[url] + 20 for url in (one, two)), timeout_s=60)

    assert load.wait(300) == 0, (tmp_path / "replay.log").read_text()[-2000:]
    assert len({r["tx_id"] for r in read_scores(kafka, TOTAL, timeout_s=300)}) == TOTAL
    samples = metrics(worker_port)
    assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
    shell.stop_all()  # serve's workers stop: everything they wrote is on the topics

    # No request failed on both Tritons: none waited, none was dropped; the attempts
    # that failed on the stopped Triton were answered by the other at once.
    triton = {k: v for k, v in samples.items() if k.startswith("factory_triton")}
    assert samples.get("factory_triton_failed_requests_total") == 0.0, triton
    sent = {json.loads(m.value)["tx_id"]
            for m in read_to_end(kafka, Settings(), "transactions")}
    assert len(sent) == TOTAL
    records = read_to_end(kafka, Settings(), "scores")
    assert_scored_once(records, sent)
    versions = [json.loads(m.value)["model_version"] for m in records]
    assert set(versions) == {1, 2}, "scored by version 1, then by version 2"

    events = _model_events(kafka)
    restored = [e for e in events if e["event"] == "serving_restored"]
    assert [e["endpoint"] for e in restored] == [two], events
    assert any(e["event"] == "unloaded" and e["version"] == 1 for e in events), events
    # Prometheus scrapes both Tritons.
    targets = json.loads(_get(f"{endpoints['prometheus']}/api/v1/targets"))
    scraped = {t["labels"]["instance"] for t in targets["data"]["activeTargets"]
               if t["labels"]["job"] == "triton"}
    assert scraped == set(endpoints["triton_metrics"].split(","))


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()
