"""Local services start from nothing, answer health checks, and stop without leftovers."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest

from infra.local.base import PrerequisiteError, free_port, pid_alive, port_is_open
from infra.local.manager import Stack
from streams.settings import Settings
from streams.topics import kafka_layout

pytestmark = pytest.mark.integration


def fresh_settings(state: Path) -> Settings:
    return dataclasses.replace(
        Settings(), state_dir=state, kafka_port=free_port(), kafka_controller_port=free_port(),
        redis_port=free_port(), triton_http_port=free_port(), triton_grpc_port=free_port(),
        triton_metrics_port=free_port(), prometheus_port=free_port(),
        alertmanager_port=free_port(),
        worker_metrics_port=free_port(),
    )


def stack_of(settings: Settings) -> Stack:
    return Stack(settings, kafka_layout(settings.partitions))


def test_up_twice_then_down_leaves_no_process_and_no_port(tmp_path: Path) -> None:
    stack = stack_of(fresh_settings(tmp_path))
    ports = [p for s in stack.services.values() for p in s.ports.values()]
    try:
        stack.up(echo=False)
        pids = {name: s.pid() for name, s in stack.services.items()}
        assert all(pids.values()), pids
        assert set(stack.status().values()) == {"up"}
        stack.up(echo=False)  # harmless: the same processes keep running
        assert {name: s.pid() for name, s in stack.services.items()} == pids
        assert set(stack.status().values()) == {"up"}
    finally:
        stack.down(echo=False)
    assert not any(pid_alive(pid) for pid in pids.values() if pid)
    assert not [p for p in ports if port_is_open(p)]
    assert set(stack.status().values()) == {"down"}
    stack.down(echo=False)  # down twice is harmless too


def test_the_local_redis_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    import redis

    stack = stack_of(fresh_settings(tmp_path))
    try:
        url = stack.up(["redis"], echo=False).redis
        client = redis.Redis.from_url(url)
        client.hset("factory:router:fraud_detector", mapping={"serving": 3, "generation": 7})
        client.close()
        stack.down(["redis"], echo=False)
        stack.up(["redis"], echo=False)
        client = redis.Redis.from_url(url)
        assert client.hgetall("factory:router:fraud_detector") == {
            b"serving": b"3", b"generation": b"7"}
        client.close()
    finally:
        stack.down(echo=False)


def test_a_taken_port_gives_one_clear_line(tmp_path: Path) -> None:
    settings = fresh_settings(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.redis_port))
        squatter.listen()
        stack = stack_of(settings)
        with pytest.raises(PrerequisiteError) as caught:
            stack.up(["redis"], echo=False)
    message = str(caught.value)
    assert "\n" not in message
    assert f"port {settings.redis_port}" in message and "already taken" in message


def test_external_services_are_used_and_never_started(tmp_path: Path) -> None:
    settings = dataclasses.replace(
        fresh_settings(tmp_path), triton_url="triton.example:8001",
    )
    stack = stack_of(settings)
    assert "triton" not in stack.services
    assert stack.status()["triton"] == "external"
    assert stack.endpoints().triton == "triton.example:8001"


def test_missing_java_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    from infra.local.kafka import KafkaService

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PrerequisiteError) as caught:
        KafkaService(tmp_path, ports={"broker": free_port(), "controller": free_port()}).start()
    assert "\n" not in str(caught.value)
    assert "Java 17" in str(caught.value) and "install" in str(caught.value)


def test_prometheus_scrapes_triton(live_stack) -> None:  # noqa: ANN001
    import json
    import time
    import urllib.request

    url = f"{live_stack.endpoints.prometheus}/api/v1/query?query=up"
    deadline = time.monotonic() + 30
    jobs: dict[str, str] = {}
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.loads(response.read())["data"]["result"]
        jobs = {r["metric"]["job"]: r["value"][1] for r in result}
        if jobs.get("triton") == "1" and "factory-worker" in jobs:
            break
        time.sleep(1)
    assert jobs.get("triton") == "1", jobs
    assert "factory-worker" in jobs
