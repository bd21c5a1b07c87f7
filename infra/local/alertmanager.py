"""Alertmanager from Debian's ``prometheus-alertmanager``: routes the factory's alerts."""

from __future__ import annotations

import json
import shutil
import urllib.request
from dataclasses import dataclass
from typing import Any

from infra.local.base import LocalService
from infra.local.redis import ensure_debian_package


@dataclass
class AlertmanagerService(LocalService):
    """A single Alertmanager bound to 127.0.0.1, clustering off.

    Every alert goes to one receiver: a webhook at ``webhook_url`` (the
    ``FACTORY_ALERT_WEBHOOK_URL`` setting), or, without one, a receiver that drops them,
    so that the alerts are still visible in Alertmanager's UI and API. The grouping
    intervals are short for a local factory: a first notification a few seconds after an
    alert fires, not the half minute of Alertmanager's defaults.
    """

    name: str = "alertmanager"
    webhook_url: str | None = None
    group_wait: str = "2s"
    group_interval: str = "10s"
    repeat_interval: str = "4h"

    def __post_init__(self) -> None:
        self.ports.setdefault("web", 9094)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['web']}"

    def config(self) -> dict[str, Any]:
        """The Alertmanager configuration (JSON is YAML, and quotes every URL safely)."""
        receiver: dict[str, Any] = {"name": "webhook" if self.webhook_url else "null"}
        if self.webhook_url:
            receiver["webhook_configs"] = [{"url": self.webhook_url, "send_resolved": True}]
        return {
            "route": {
                "receiver": receiver["name"],
                "group_by": ["alertname", "monitor"],
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [receiver],
        }

    def prepare(self) -> None:
        ensure_debian_package("prometheus-alertmanager", "prometheus-alertmanager",
                              "alertmanager")
        path = self.home / "alertmanager.yml"
        path.write_text(json.dumps(self.config(), indent=2) + "\n")
        path.chmod(0o600)  # a webhook URL often carries its token

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [
            shutil.which("prometheus-alertmanager") or "prometheus-alertmanager",
            f"--config.file={self.home / 'alertmanager.yml'}",
            f"--storage.path={self.home / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.ports['web']}",
            f"--web.external-url={self.url()}",
            "--cluster.listen-address=",
        ], {}

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url()}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
