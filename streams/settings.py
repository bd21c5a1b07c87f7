"""Settings of every deployable, read from the environment in this one module.

The services' own settings (where Kafka, Redis and Triton are, credentials, the local
stack's ports and state folder) are :class:`infra.settings.ServiceSettings`;
:class:`Settings` adds what only the stream code reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from infra.settings import REPO_ROOT, ServiceSettings, env, env_ints

__all__ = ["REPO_ROOT", "Settings"]  # the repository root is infra's (one place)


@dataclass(frozen=True)
class Settings(ServiceSettings):
    """Everything the factory reads from the environment."""

    worker_web_port: int = 6066
    # Where the workers and the retrainer serve their metrics (FACTORY_METRICS_ADDR):
    # loopback unless a container sets 0.0.0.0 for its cluster's Prometheus.
    metrics_addr: str = "127.0.0.1"
    partitions: int = 4
    # Kafka static group membership of `factory worker` (FACTORY_GROUP_INSTANCE_ID;
    # a StatefulSet pod's name, say): unique within each consumer group.
    group_instance_id: str | None = None
    registry_dir: Path | None = None

    @property
    def model_registry_dir(self) -> Path:
        """The model registry: ``registry_dir``, else ``<state_dir>/registry``."""
        return self.registry_dir or self.state_dir / "registry"

    @classmethod
    def from_env(cls) -> Self:
        registry = env("FACTORY_REGISTRY_DIR")
        own: dict[str, Any] = {
            "group_instance_id": env("FACTORY_GROUP_INSTANCE_ID"),
            "metrics_addr": env("FACTORY_METRICS_ADDR", "127.0.0.1") or "127.0.0.1",
            "registry_dir": Path(registry) if registry else None,
            **env_ints({"worker_web_port": "FACTORY_WORKER_WEB_PORT",
                        "partitions": "FACTORY_PARTITIONS"}),
        }
        return dataclasses.replace(super().from_env(), **own)
