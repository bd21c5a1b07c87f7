"""A drift alert travels from a scraped gauge through Prometheus and Alertmanager to a webhook.

Real Prometheus and Alertmanager on free ports, loading the project's own rule file; the
exporter and the webhook are small servers inside the test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from infra.local.alertmanager import AlertmanagerService
from infra.local.base import free_port
from infra.local.prometheus import PrometheusService

pytestmark = pytest.mark.integration


class Webhook:
    """An HTTP server on 127.0.0.1 that keeps the JSON body of every POST."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server protocol
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                posts.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [alert for post in list(self.posts) for alert in post["alerts"]
                if alert["labels"].get("alertname") == alertname
                and alert["status"] == "firing"]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def drift_exporter() -> Iterator[tuple[str, Gauge]]:
    """A metrics endpoint with its own registry that reports drift on ``feature_psi``."""
    registry = CollectorRegistry()
    detected = Gauge("factory_drift_detected", "Drift detected (debounced)", ["monitor"],
                     registry=registry)
    detected.labels("feature_psi").set(1)
    detected.labels("score_psi").set(0)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}", detected
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_drift_alert_reaches_the_webhook(
    tmp_path: Path, webhook: Webhook, drift_exporter: tuple[str, Gauge]
) -> None:
    target, _ = drift_exporter
    alertmanager = AlertmanagerService(
        tmp_path, ports={"web": free_port()}, webhook_url=webhook.url,
        group_wait="1s", group_interval="5s", start_timeout_s=60,
    )
    prometheus = PrometheusService(
        tmp_path, ports={"web": free_port()}, targets={"drift": [target]},
        scrape_interval="1s", alertmanager=f"127.0.0.1:{alertmanager.ports['web']}",
        start_timeout_s=60,
    )
    try:
        alertmanager.start()
        prometheus.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not webhook.firing("FactoryDriftDetected"):
            time.sleep(0.5)
        alerts = webhook.firing("FactoryDriftDetected")
        assert alerts, (
            f"no firing FactoryDriftDetected within 60 s; webhook got {webhook.posts}\n"
            f"prometheus:\n{prometheus.tail_log()}\nalertmanager:\n{alertmanager.tail_log()}"
        )
        assert {a["labels"]["monitor"] for a in alerts} == {"feature_psi"}
        assert alerts[0]["labels"]["severity"] == "warning"
        assert "feature_psi" in alerts[0]["annotations"]["summary"]
    finally:
        prometheus.stop()
        alertmanager.stop()
