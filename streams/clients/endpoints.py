"""Where the services are: Kafka, Redis and Triton, from the settings or the local stack.

A command takes each endpoint its settings name (``KAFKA_BOOTSTRAP_SERVERS``,
``REDIS_URL``, ``TRITON_URL``) and the rest from the local stack's ``endpoints.json``,
written by ``factory up``.
"""

from __future__ import annotations

from infra.local.manager import Endpoints
from streams.settings import Settings


def service_endpoints(settings: Settings, command: str = "factory") -> Endpoints:
    """Kafka, Redis and Triton: from the settings where they name them, else from the
    local stack started by ``factory up``; one clear line (``SystemExit``) otherwise."""
    path = settings.state_dir / "endpoints.json"
    local = Endpoints.load(path) if path.exists() else None
    explicit = {"kafka": settings.kafka.bootstrap_servers, "triton": settings.triton_url,
                "redis": settings.redis_url.get() if settings.redis_url else None}
    missing = [name for name, value in explicit.items() if not value]
    if missing and local is None:
        settings_names = {"kafka": "KAFKA_BOOTSTRAP_SERVERS", "redis": "REDIS_URL",
                          "triton": "TRITON_URL"}
        raise SystemExit(f"{command}: no {', '.join(missing)} endpoint: run 'factory up' or "
                         f"set {', '.join(settings_names[n] for n in missing)}")
    chosen = {name: value or str(getattr(local, name)) for name, value in explicit.items()}
    return Endpoints(**chosen)
