"""Several local Tritons (``FACTORY_TRITON_REPLICAS``) as the stack describes them:
names, ports, endpoints and Prometheus targets. Nothing is started."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from infra.local.base import PrerequisiteError
from infra.local.manager import Stack
from infra.local.triton import TritonService
from streams.settings import Settings
from streams.topics import kafka_layout


def stack_of(tmp_path: Path, **changes: object) -> Stack:
    settings = dataclasses.replace(Settings(), state_dir=tmp_path, **changes)
    return Stack(settings, kafka_layout(settings.partitions))


def test_one_triton_by_default_as_before(tmp_path: Path) -> None:
    stack = stack_of(tmp_path)
    assert [name for name in stack.services if name.startswith("triton")] == ["triton"]
    endpoints = stack.endpoints()
    assert endpoints.triton == "127.0.0.1:8001"
    assert endpoints.triton_metrics == "127.0.0.1:8002"
    assert stack.services["prometheus"].targets["triton"] == ["127.0.0.1:8002"]  # type: ignore[attr-defined]
    assert list(stack.status()) == ["kafka", "redis", "triton", "alertmanager", "prometheus"]


def test_replicas_serve_the_same_repository_on_the_next_ports(tmp_path: Path) -> None:
    stack = stack_of(tmp_path, triton_replicas=3, triton_repo=tmp_path / "repo")
    tritons = stack.tritons
    assert [t.name for t in tritons] == ["triton", "triton-2", "triton-3"]
    assert [t.ports for t in tritons] == [
        {"http": 8000, "grpc": 8001, "metrics": 8002},
        {"http": 8003, "grpc": 8004, "metrics": 8005},
        {"http": 8006, "grpc": 8007, "metrics": 8008},
    ]
    assert all(isinstance(t, TritonService) and t.model_repository == tmp_path / "repo"
               for t in tritons)
    assert len({t.home for t in tritons}) == 3, "each keeps its own state folder"
    endpoints = stack.endpoints()
    assert endpoints.triton == "127.0.0.1:8001,127.0.0.1:8004,127.0.0.1:8007"
    assert endpoints.triton_metrics == "127.0.0.1:8002,127.0.0.1:8005,127.0.0.1:8008"
    assert stack.services["prometheus"].targets["triton"] == [  # type: ignore[attr-defined]
        "127.0.0.1:8002", "127.0.0.1:8005", "127.0.0.1:8008"]
    assert stack._selected(["triton"]) == ["triton", "triton-2", "triton-3"]
    assert stack._selected(None)[:5] == ["kafka", "redis", "triton", "triton-2", "triton-3"]
    assert list(stack.status()) == ["kafka", "redis", "triton", "triton-2", "triton-3",
                                    "alertmanager", "prometheus"]


def test_replicas_of_scattered_ports_never_share_one(tmp_path: Path) -> None:
    stack = stack_of(tmp_path, triton_replicas=2, triton_http_port=40000,
                     triton_grpc_port=40007, triton_metrics_port=40003)
    ports = [p for t in stack.tritons for p in t.ports.values()]
    assert len(set(ports)) == len(ports) == 6
    assert stack.tritons[1].ports == {"http": 40008, "grpc": 40015, "metrics": 40011}


def test_replica_ports_past_the_last_port_are_refused_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(PrerequisiteError, match="triton-2: its ports .* run past 65535"):
        stack_of(tmp_path, triton_replicas=2, triton_http_port=60000,
                 triton_grpc_port=65000, triton_metrics_port=65001)
    with pytest.raises(PrerequisiteError, match="FACTORY_TRITON_REPLICAS must be at least 1"):
        stack_of(tmp_path, triton_replicas=0)


def test_an_external_triton_list_starts_no_local_triton(tmp_path: Path) -> None:
    stack = stack_of(tmp_path, triton_replicas=2, triton_url="a:8001,b:8001")
    assert stack.tritons == []
    assert stack.endpoints().triton == "a:8001,b:8001"
    assert stack.endpoints().triton_metrics is None
    assert stack.status()["triton"] == "external"


def test_the_replica_setting_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FACTORY_TRITON_REPLICAS", "2")
    assert Settings.from_env().triton_replicas == 2
    monkeypatch.delenv("FACTORY_TRITON_REPLICAS")
    assert Settings.from_env().triton_replicas == 1
