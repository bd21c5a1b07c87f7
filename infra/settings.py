"""Where the services are, or how to start them locally, read from the environment.

A setting that names an existing service (``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``,
``TRITON_URL``) means "use it, start nothing local for it". Credentials only ever come
from the environment and are kept in :class:`Secret` so that they never show in a repr
or a log line. The application's own settings are a subclass of :class:`ServiceSettings`
that adds its fields; that module and this one are the only ones that read the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

REPO_ROOT = Path(__file__).resolve().parents[1]


class Secret:
    """A credential that prints as ``'**********'``."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __bool__(self) -> bool:
        return bool(self._value)


def env(name: str, default: str | None = None) -> str | None:
    """The variable ``name``; unset or empty means ``default``."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_secret(name: str) -> Secret | None:
    value = env(name)
    return Secret(value) if value else None


def env_flag(name: str) -> bool:
    return (env(name) or "").lower() in ("1", "true", "yes", "on")


def env_ints(variables: dict[str, str]) -> dict[str, int]:
    """``field -> int`` of each set variable of ``variables`` (``field -> variable``)."""
    return {name: int(value) for name, var in variables.items()
            if (value := env(var)) is not None}


LOCAL_KAFKA_USER = "factory"
"""The factory's Kafka user on the secured local broker unless KAFKA_SASL_USERNAME says."""


@dataclass(frozen=True)
class KafkaSettings:
    """How to reach Kafka; SASL and TLS are plain settings."""

    bootstrap_servers: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: str | None = None

    def client_config(self, bootstrap: str) -> dict[str, str]:
        """librdkafka (confluent-kafka) options for this connection."""
        config = {"bootstrap.servers": bootstrap, "security.protocol": self.security_protocol}
        if self.sasl_mechanism:
            config["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            config["sasl.username"] = self.sasl_username
        if self.sasl_password:
            config["sasl.password"] = self.sasl_password.get()
        if self.ssl_ca_location:
            config["ssl.ca.location"] = self.ssl_ca_location
        return config


@dataclass(frozen=True)
class ServiceSettings:
    """The services: Kafka, Redis and Triton, external or local, and the local stack's
    Prometheus and Alertmanager."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    # The local broker with SASL/SCRAM over TLS and ACLs (docs/security.md).
    kafka_secure: bool = False
    kafka_admin_password: Secret | None = None
    redis_url: Secret | None = None
    redis_password: Secret | None = None
    # An ACL user of the local Redis instead of its default user.
    redis_username: str | None = None
    # One Triton gRPC endpoint, or several comma-separated that serve the same model
    # repository (the workers spread their requests over them).
    triton_url: str | None = None
    state_dir: Path = REPO_ROOT / ".factory"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    redis_port: int = 6379
    triton_http_port: int = 8000
    triton_grpc_port: int = 8001
    triton_metrics_port: int = 8002
    # Local Tritons `factory up` starts over the same model repository; replica k
    # answers on the three ports above shifted by k times their span (8003-8005, ...).
    triton_replicas: int = 1
    prometheus_port: int = 9090
    # Alertmanager's usual 9093 is the local Kafka controller's port.
    alertmanager_port: int = 9094
    alert_webhook_url: Secret | None = None
    # Where the workers and the retrainer serve their metrics, and the local Prometheus
    # scrapes them.
    worker_metrics_port: int = 8100
    retrainer_metrics_port: int = 8110
    # The Triton model repository: what the local Triton mounts and the model commands
    # publish to (FACTORY_TRITON_REPO).
    triton_repo: Path = REPO_ROOT / "triton_repo"

    @classmethod
    def from_env(cls) -> Self:
        state = env("FACTORY_STATE_DIR")
        state_dir = Path(state) if state else REPO_ROOT / ".factory"
        bootstrap = env("KAFKA_BOOTSTRAP_SERVERS")
        protocol = env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
        # The local broker is secured by FACTORY_KAFKA_SECURE, or by asking for SASL_SSL
        # without naming a broker; it speaks SCRAM-SHA-512 over TLS only, with the CA
        # it generated at its first start.
        secure = bootstrap is None and (env_flag("FACTORY_KAFKA_SECURE")
                                        or protocol == "SASL_SSL")
        kafka = KafkaSettings(
            bootstrap_servers=bootstrap,
            security_protocol="SASL_SSL" if secure else protocol,  # type: ignore[arg-type]
            sasl_mechanism="SCRAM-SHA-512" if secure else env("KAFKA_SASL_MECHANISM"),
            sasl_username=env("KAFKA_SASL_USERNAME", LOCAL_KAFKA_USER if secure else None),
            sasl_password=env_secret("KAFKA_SASL_PASSWORD"),
            ssl_ca_location=env("KAFKA_SSL_CA_LOCATION", str(
                state_dir.resolve() / "kafka" / "tls" / "ca.pem") if secure else None),
        )
        ints = env_ints({
            "kafka_port": "FACTORY_KAFKA_PORT",
            "kafka_controller_port": "FACTORY_KAFKA_CONTROLLER_PORT",
            "redis_port": "FACTORY_REDIS_PORT",
            "triton_http_port": "FACTORY_TRITON_HTTP_PORT",
            "triton_grpc_port": "FACTORY_TRITON_GRPC_PORT",
            "triton_metrics_port": "FACTORY_TRITON_METRICS_PORT",
            "prometheus_port": "FACTORY_PROMETHEUS_PORT",
            "alertmanager_port": "FACTORY_ALERTMANAGER_PORT",
            "worker_metrics_port": "FACTORY_WORKER_METRICS_PORT",
            "retrainer_metrics_port": "FACTORY_RETRAINER_METRICS_PORT",
            "triton_replicas": "FACTORY_TRITON_REPLICAS",
        })
        triton_repo = env("FACTORY_TRITON_REPO")
        return cls(
            kafka=kafka,
            kafka_secure=secure,
            kafka_admin_password=env_secret("FACTORY_KAFKA_ADMIN_PASSWORD"),
            redis_url=env_secret("REDIS_URL"),
            redis_password=env_secret("REDIS_PASSWORD"),
            redis_username=env("REDIS_USERNAME"),
            triton_url=env("TRITON_URL"),
            alert_webhook_url=env_secret("FACTORY_ALERT_WEBHOOK_URL"),
            state_dir=state_dir,
            triton_repo=Path(triton_repo) if triton_repo else REPO_ROOT / "triton_repo",
            **ints,
        )
