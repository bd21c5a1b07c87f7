"""Serving that repairs itself: a Triton that restarts bare and a route lost from Redis
are noticed and put right by ``factory serve``'s serving guard, under live load, with
every transaction scored once.

A stack of its own (``factory up``, free ports), a first model trained and promoted, then
``factory serve --no-retrainer`` under a paced replay while the test restarts Triton with
nothing loaded (as a restarted pod comes back) and deletes the route from Redis.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.streams.factory_shell import Shell, metrics, read_scores, shell, wait_ready, wait_until
from tests.streams.sink_checks import read_to_end

__all__ = ["shell"]  # the fixture

pytestmark = pytest.mark.integration

WORLD = ["--simulate", "--customers", "400", "--terminals", "800", "--days", "60", "--quiet"]
TRAIN = ["model", "train", "--customers", "200", "--terminals", "400", "--days", "45"]
TOTAL = 16_000


def _ready_versions(triton: str) -> list[int]:
    from streams.lifecycle.swap import triton_ready_versions

    return triton_ready_versions(triton)


def _model_events(kafka: str) -> list[dict]:
    from streams.clients.kafka_io import consume, topic_end_offsets
    from streams.settings import Settings

    ends = topic_end_offsets(kafka, Settings(), "model-events")
    received = consume(kafka, Settings(), "model-events", timeout_s=30, until=lambda got: len(
        got) >= sum(ends.values()))
    return [json.loads(m.value) for m in received]


def test_serving_comes_back_by_itself_after_a_bare_triton_restart_and_a_lost_route(
    shell: Shell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from infra.local.manager import Stack
    from streams.clients.router import ModelRouter
    from streams.settings import Settings
    from streams.topics import kafka_layout

    shell("up")
    endpoints = json.loads((tmp_path / "state" / "endpoints.json").read_text())
    kafka, triton = endpoints["kafka"], endpoints["triton"]
    out = shell(*TRAIN, "--promote")
    assert "version 1 is the champion and serves" in out, out

    # The local Triton starts with the champion loaded.
    shell("down", "triton")
    out = shell("up", "triton")
    assert "serving v1 loaded" in out, out
    assert _ready_versions(triton) == [1]

    worker_port = int(shell.env["FACTORY_WORKER_METRICS_PORT"])
    guard_port = int(shell.env["FACTORY_RETRAINER_METRICS_PORT"])
    serve = shell.start("serve", "serve", "--no-retrainer", "--status-every", "2")
    wait_ready(worker_port, serve, tmp_path / "serve.log")
    load = shell.start("replay", "replay", *WORLD, "--limit", str(TOTAL), "--speed", "28800")

    def scored() -> float:
        return metrics(worker_port).get("factory_events_scored_total", 0.0)

    wait_until("first scores", lambda: scored() > 1500)

    # A Triton restarted bare, as a rescheduled pod comes back: nothing loaded.
    for name, value in shell.env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    service = Stack(settings, kafka_layout(settings.partitions)).services["triton"]
    seen: list[float | None] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            seen.append(metrics(guard_port).get("factory_serving_ready"))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    service.stop()
    service.start()
    wait_until("version 1 READY again", lambda: _ready_versions(triton) == [1], timeout_s=60)
    before = scored()
    wait_until("scoring to resume", lambda: scored() > before + 500, timeout_s=60)
    wait_until("the guard to report serving ready",
          lambda: metrics(guard_port).get("factory_serving_ready") == 1.0, timeout_s=30)
    sampling.set()
    sampler.join()
    assert 0.0 in seen, "factory_serving_ready never showed serving down"
    assert load.poll() is None, "the load ended before the Triton restart: make it longer"

    # The route lost from Redis (a store that came back empty): restored from the registry.
    router = ModelRouter(endpoints["redis"])
    try:
        router.client.delete(router.key)
        route = wait_until("the route restored", router.route, timeout_s=30)
        assert route.serving == 1 and route.shadow == 0
    finally:
        router.close()
    assert load.poll() is None, "the load ended before the route was lost: make it longer"

    assert load.wait(300) == 0, (tmp_path / "replay.log").read_text()[-2000:]
    assert len({r["tx_id"] for r in read_scores(kafka, TOTAL, timeout_s=300)}) == TOTAL, \
        "a transaction was not scored"
    assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
    samples = metrics(guard_port)
    shell.stop_all()  # serve's workers stop: everything they wrote is on the topics
    records = [json.loads(m.value) for m in read_to_end(kafka, Settings(), "scores")]
    assert len(records) == len({r["tx_id"] for r in records}) == TOTAL, (
        f"{len(records)} scores of {len({r['tx_id'] for r in records})} transactions, "
        f"{TOTAL} sent")
    assert {r["model_version"] for r in records} == {1}

    events = _model_events(kafka)
    restored = [e for e in events if e["event"] == "serving_restored"]
    assert restored and restored[0]["versions"] == [1], events
    assert any(e["event"] == "route_restored" and e["version"] == 1 for e in events), events
    assert samples.get('factory_serving_repairs_total{kind="load"}', 0.0) >= 1.0, samples
    assert samples.get('factory_serving_repairs_total{kind="route"}', 0.0) >= 1.0, samples
