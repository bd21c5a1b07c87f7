"""Start, check and stop the local services as one stack.

A service whose URL is given in the settings (``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``,
``TRITON_URL``) is external: nothing is started for it and ``down`` never touches it.
The endpoints in use are written to ``<state_dir>/endpoints.json`` so that every
process of the factory (worker, producer, tests) finds the same services.

The topics to create and the ACLs of the factory's Kafka user come from the caller
(a :class:`KafkaLayout`): the application owns its topic names.

``FACTORY_TRITON_REPLICAS`` local Tritons serve the same model repository (services
``triton``, ``triton-2``, ...; ``triton`` names them all in ``up`` and ``down``); the
endpoints carry their gRPC addresses comma-separated, as ``TRITON_URL`` takes them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from infra.local.alertmanager import AlertmanagerService
from infra.local.base import LocalService, PrerequisiteError, ServiceError, port_is_open
from infra.local.kafka import KafkaLayout, KafkaService, create_missing_topics
from infra.local.kafka_security import KafkaSecurity
from infra.local.prometheus import PrometheusService
from infra.local.redis import RedisService
from infra.local.triton import TritonService, replica_name, replica_ports
from infra.settings import ServiceSettings

# Alertmanager before Prometheus, so that the first alerts have somewhere to go.
SERVICE_ORDER = ("kafka", "redis", "triton", "alertmanager", "prometheus")


@dataclass(frozen=True)
class Endpoints:
    """Where each service of the stack answers."""

    kafka: str
    redis: str
    triton: str
    """One gRPC endpoint, or several comma-separated (as ``TRITON_URL``)."""
    prometheus: str | None = None
    triton_metrics: str | None = None
    """The local Tritons' metrics addresses, comma-separated."""
    alertmanager: str | None = None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.__dict__, indent=2))
        path.chmod(0o600)

    @classmethod
    def load(cls, path: Path) -> Endpoints:
        return cls(**json.loads(path.read_text()))


class Stack:
    """The local services described by a :class:`ServiceSettings`, with Kafka holding
    ``kafka_layout``."""

    def __init__(self, settings: ServiceSettings, kafka_layout: KafkaLayout,
                 triton_repo: Path | None = None) -> None:
        self.settings = settings
        self.kafka_layout = kafka_layout
        state = settings.state_dir
        password = settings.redis_password.get() if settings.redis_password else None
        self.services: dict[str, LocalService] = {}
        if settings.kafka.bootstrap_servers is None:
            security = None
            if settings.kafka_secure:
                security = KafkaSecurity(
                    state.resolve() / "kafka", settings.kafka.sasl_username or "",
                    settings.kafka.sasl_password, kafka_layout.acl_rules,
                    settings.kafka_admin_password)
            self.services["kafka"] = KafkaService(
                state,
                ports={"broker": settings.kafka_port, "controller": settings.kafka_controller_port},
                security=security,
            )
        if settings.redis_url is None:
            self.services["redis"] = RedisService(
                state, ports={"redis": settings.redis_port}, password=password,
                username=settings.redis_username,
            )
        if settings.triton_url is None:
            if settings.triton_replicas < 1:
                raise PrerequisiteError("FACTORY_TRITON_REPLICAS must be at least 1")
            ports = {"http": settings.triton_http_port, "grpc": settings.triton_grpc_port,
                     "metrics": settings.triton_metrics_port}
            for index in range(settings.triton_replicas):
                self.services[replica_name(index)] = TritonService(
                    state, ports=replica_ports(ports, index), name=replica_name(index),
                    model_repository=triton_repo or settings.triton_repo,
                )
        # The scoring worker's metrics port and the labels worker's after it (the
        # workers' defaults).
        targets = {"factory-worker": [f"127.0.0.1:{settings.worker_metrics_port + i}"
                                      for i in (0, 1)]}
        if self.tritons:
            targets["triton"] = [f"127.0.0.1:{t.ports['metrics']}" for t in self.tritons]
        # The retrainer and serving guard of `factory serve` / `factory retrainer`.
        targets["factory-retrainer"] = [f"127.0.0.1:{settings.retrainer_metrics_port}"]
        webhook = settings.alert_webhook_url.get() if settings.alert_webhook_url else None
        self.services["alertmanager"] = AlertmanagerService(
            state, ports={"web": settings.alertmanager_port}, webhook_url=webhook
        )
        self.services["prometheus"] = PrometheusService(
            state, ports={"web": settings.prometheus_port}, targets=targets,
            alertmanager=f"127.0.0.1:{settings.alertmanager_port}",
        )

    @property
    def endpoints_file(self) -> Path:
        return self.settings.state_dir / "endpoints.json"

    @property
    def tritons(self) -> list[LocalService]:
        """The local Tritons, the first one first (none when ``TRITON_URL`` is set)."""
        return [service for name, service in self.services.items()
                if _kind(name) == "triton"]

    def endpoints(self) -> Endpoints:
        s = self.settings
        kafka = s.kafka.bootstrap_servers or self.services["kafka"].url()
        redis = s.redis_url.get() if s.redis_url else self.services["redis"].url()
        triton = s.triton_url or ",".join(t.url() for t in self.tritons)
        prometheus = self.services["prometheus"].url()
        metrics = ",".join(f"127.0.0.1:{t.ports['metrics']}" for t in self.tritons) or None
        alertmanager = self.services["alertmanager"].url()
        return Endpoints(kafka, redis, triton, prometheus, metrics, alertmanager)

    def _ordered(self) -> list[str]:
        """The services in start order, each Triton replica after the first."""
        return [name for kind in SERVICE_ORDER for name in self.services
                if _kind(name) == kind]

    def _selected(self, names: Iterable[str] | None) -> list[str]:
        wanted = set(names) if names else set(SERVICE_ORDER)
        return [n for n in self._ordered() if n in wanted or _kind(n) in wanted]

    def up(self, names: Iterable[str] | None = None, echo: bool = True) -> Endpoints:
        """Start the selected local services (all by default) and wait until healthy."""
        for name in self._selected(names):
            service = self.services[name]
            started = time.monotonic()
            already = service.running()
            service.start()
            if echo:
                how = "already up" if already else f"up in {time.monotonic() - started:.1f} s"
                print(f"{name:<11} {how:<18} {service.display_url()}", flush=True)
        if "kafka" in self._selected(names) or self.settings.kafka.bootstrap_servers:
            from confluent_kafka import KafkaException

            try:
                kafka = self.settings.kafka.client_config(self.endpoints().kafka)
                create_missing_topics(kafka, self.kafka_layout.topics)
            except (KafkaException, RuntimeError) as exc:
                # A refused user or a broker that went away: one line, not a traceback.
                raise ServiceError(f"kafka: the factory's topics: {exc}") from exc
        endpoints = self.endpoints()
        endpoints.save(self.endpoints_file)
        return endpoints

    def down(self, names: Iterable[str] | None = None, echo: bool = True) -> None:
        """Stop the selected local services in reverse order."""
        for name in reversed(self._selected(names)):
            self.services[name].stop()
            if echo:
                print(f"{name:<11} down", flush=True)

    def status(self) -> dict[str, str]:
        """One word a service: up, starting, down, or external."""
        report: dict[str, str] = {}
        names = [name for kind in SERVICE_ORDER
                 for name in [n for n in self._ordered() if _kind(n) == kind] or [kind]]
        for name in names:
            service = self.services.get(name)
            if service is None:
                report[name] = "external"
                continue
            if not service.running():
                taken = any(port_is_open(p) for p in service.ports.values())
                report[name] = "down (port taken by another process)" if taken else "down"
                continue
            try:
                report[name] = "up" if service.healthy() else "starting"
            except Exception:  # noqa: BLE001 - a failed health check is "starting"
                report[name] = "starting"
        return report


def _kind(name: str) -> str:
    """The kind of a service: ``triton`` for ``triton-2``, its name otherwise."""
    return name.partition("-")[0]
