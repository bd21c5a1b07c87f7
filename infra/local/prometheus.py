"""Prometheus from Debian's ``prometheus`` package, scraping the worker and Triton.

It evaluates the alert rules of ``infra/prometheus/`` and sends what fires to Alertmanager.
"""

from __future__ import annotations

import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from infra.local.base import LocalService
from infra.local.redis import ensure_debian_package

RULES_DIR = Path(__file__).resolve().parents[1] / "prometheus"


@dataclass
class PrometheusService(LocalService):
    """Prometheus bound to 127.0.0.1 with the project's scrape targets and alert rules.

    ``targets`` maps a job name to the ``host:port`` list that job scrapes;
    ``alertmanager`` (``host:port``) is where firing alerts go, none when it is None.
    ``scrape_interval`` is also the rule evaluation interval.
    """

    name: str = "prometheus"
    targets: dict[str, list[str]] = field(default_factory=dict)
    scrape_interval: str = "5s"
    alertmanager: str | None = None

    def __post_init__(self) -> None:
        self.ports.setdefault("web", 9090)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['web']}"

    def config_text(self) -> str:
        lines = [
            "global:",
            f"  scrape_interval: {self.scrape_interval}",
            f"  evaluation_interval: {self.scrape_interval}",
        ]
        rules = sorted(RULES_DIR.glob("*rules*.yml"))
        if rules:
            lines.append("rule_files:")
            lines += [f"  - {path}" for path in rules]
        if self.alertmanager:
            lines += [
                "alerting:",
                "  alertmanagers:",
                "    - static_configs:",
                f"        - targets: ['{self.alertmanager}']",
            ]
        lines.append("scrape_configs:")
        for job, hosts in sorted(self.targets.items()):
            lines += [
                f"  - job_name: {job}",
                "    static_configs:",
                "      - targets: [" + ", ".join(f"'{h}'" for h in hosts) + "]",
            ]
        return "\n".join(lines) + "\n"

    def prepare(self) -> None:
        ensure_debian_package("prometheus", "prometheus", "prometheus")
        (self.home / "prometheus.yml").write_text(self.config_text())

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={self.home / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.home / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.ports['web']}",
            "--storage.tsdb.retention.time=2d",
        ], {}

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url()}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
