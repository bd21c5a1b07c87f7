"""The alert rules, Prometheus's and Alertmanager's configurations pass their own tools.

Unit tests: ``promtool`` and ``amtool`` read files, no service is started.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from infra.local.alertmanager import AlertmanagerService
from infra.local.prometheus import RULES_DIR, PrometheusService

RULE_FILES = sorted(RULES_DIR.glob("*rules*.yml"))
RULE_TESTS = sorted((RULES_DIR / "tests").glob("*.yml"))
ALERTS = {
    "FactoryDriftDetected", "FactoryChallengerRejected", "FactoryModelRollback",
    "FactoryConsumerLagHigh", "FactoryDeadLetterRateHigh", "FactoryScoringLatencyP99High",
    "FactoryTritonErrors", "FactoryNoEventsScored", "FactoryServingModelDown",
    "FactoryLostStateNotRestored", "FactoryFeatureLogBlocked",
}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # A failure, not a skip: `make test` installs these, so a missing one is a
        # missing install step that must not pass unnoticed.
        pytest.fail(f"'{name}' is missing (Debian: apt-get install prometheus "
                    "prometheus-alertmanager, or run infra/setup.sh)")
    return path


def run(*argv: str | Path) -> str:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_rule_files_are_valid() -> None:
    assert RULE_FILES, f"no *rules*.yml in {RULES_DIR}"
    out = run(tool("promtool"), "check", "rules", *RULE_FILES)
    assert f"SUCCESS: {len(ALERTS)} rules found" in out


def test_every_alert_has_severity_summary_description_and_a_unit_test() -> None:
    import yaml

    rules = [rule for path in RULE_FILES
             for group in yaml.safe_load(path.read_text())["groups"]
             for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    tested: dict[str, set[bool]] = {}
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
    assert {name: {False, True} for name in ALERTS} == tested, "each alert: silent and firing"


def test_promtool_unit_tests_pass() -> None:
    assert RULE_TESTS
    out = run(tool("promtool"), "test", "rules", *RULE_TESTS)
    assert "SUCCESS" in out


@pytest.mark.parametrize("alertmanager", [None, "127.0.0.1:9094"])
def test_prometheus_config_is_valid(tmp_path: Path, alertmanager: str | None) -> None:
    service = PrometheusService(tmp_path, targets={"factory-worker": ["127.0.0.1:8100"]},
                                alertmanager=alertmanager)
    path = tmp_path / "prometheus.yml"
    path.write_text(service.config_text())
    run(tool("promtool"), "check", "config", path)
    assert ("alertmanagers" in path.read_text()) == (alertmanager is not None)


@pytest.mark.parametrize("webhook", [None, "https://hooks.example/services/T0/B0/secret?x='1'"])
def test_alertmanager_config_is_valid(tmp_path: Path, webhook: str | None) -> None:
    amtool = tool("amtool")
    service = AlertmanagerService(tmp_path, webhook_url=webhook)
    service.home.mkdir(parents=True)
    service.prepare()
    path = service.home / "alertmanager.yml"
    run(amtool, "check-config", path)
    config = json.loads(path.read_text())
    receivers = config["receivers"]
    assert [r["name"] for r in receivers] == [config["route"]["receiver"]]
    urls = [c["url"] for r in receivers for c in r.get("webhook_configs", [])]
    assert urls == ([webhook] if webhook else [])
    assert path.stat().st_mode & 0o077 == 0
